"""The `hcq-ros` dispatcher: every registered command resolves to a module with add_arguments/run."""
import argparse
import importlib

import pytest

from hcq_ros import cli


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_unknown_command_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        cli.main(["no-such-command"])
    assert "unknown command 'no-such-command'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_command_module_has_interface(name):
    module = importlib.import_module(cli.COMMANDS[name][0])
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    assert callable(module.run)
