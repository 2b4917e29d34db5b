"""The demo's whole path (data, training, describing, scoring) on a tiny budget, and its rerun."""
from tinyvlm.cli import main


def test_demo_runs_end_to_end_and_reruns(tmp_path, capsys):
    argv = ["demo", "--out", str(tmp_path), "--steps", "12", "--preset", "nano", "--n-train", "40", "--n-test", "6"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "claims:" in out and "| model | short/free |" in out and "| blind |" in out
    assert (tmp_path / "eval" / "report.html").exists() and (tmp_path / "model" / "loss.png").exists()
    assert main(argv) == 0  # a finished run is reused, not retrained or refused
