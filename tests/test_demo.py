"""The demo's whole path (data, training, describing, scoring) on a tiny budget, and its rerun."""
from tinyvlm.cli import main


def test_demo_runs_end_to_end_and_reruns(tmp_path, capsys, monkeypatch):
    # the demo trains in fp32 even where bf16 is native, so its figures are the same on every machine
    monkeypatch.setattr("tinyvlm.train.config.bf16_supported", lambda device: True)
    argv = ["demo", "--out", str(tmp_path), "--steps", "12", "--preset", "nano", "--n-train", "40", "--n-test", "6"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "precision: fp32 on cpu (--dtype fp32)" in err
    assert "claims:" in out and "| model | short/free |" in out and "| blind |" in out
    assert (tmp_path / "eval" / "report.html").exists() and (tmp_path / "model" / "loss.png").exists()
    assert main(argv) == 0  # a finished run is reused, not retrained or refused
