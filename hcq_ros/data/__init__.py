"""Data: the SynthHumans generator, readers/writers for the real formats, transforms and sampling."""
