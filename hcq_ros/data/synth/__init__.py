"""SynthHumans: procedural multi-person images and sequences with exact ground truth for every task.

    from hcq_ros.data.synth import SceneConfig, generate_image, generate_sequence, IdentityPool
    sample = generate_image(seed, SceneConfig(width=256, height=256))
    frames = list(generate_sequence(seed, cfg, num_frames=100, camera=1, pool=IdentityPool(50, seed), name="s01"))
"""
from hcq_ros.data.synth.appearance import Appearance, Identity, IdentityPool
from hcq_ros.data.synth.scene import SceneConfig, generate_image, measure_speed
from hcq_ros.data.synth.sequence import generate_sequence

__all__ = ["Appearance", "Identity", "IdentityPool", "SceneConfig", "generate_image", "generate_sequence",
           "measure_speed"]
