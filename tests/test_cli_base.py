import subprocess
import sys

import pytest

from procure import __version__
from procure.cli import build_parser, main


def test_version_prints_the_package_version_and_exits_zero(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"procure {__version__}"


def test_every_subsystem_registers_its_commands():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {"value", "market", "run", "report"} <= set(sub.choices)


def test_unknown_command_is_usage_error():
    proc = subprocess.run([sys.executable, "-m", "procure.cli", "no-such-command"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "invalid choice: 'no-such-command'" in proc.stderr
    assert "Traceback" not in proc.stderr
