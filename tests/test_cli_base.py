import subprocess
import sys

from procure.cli import main


def test_version_exits_zero(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert "procure" in capsys.readouterr().out


def test_unknown_command_is_usage_error():
    proc = subprocess.run([sys.executable, "-m", "procure.cli", "no-such-command"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
