"""The paper's experiments: every shipped form resolves (its preflight passes:
a full form is refused nowhere but in its cost), and the reduced forms run end to end
(slow: ~5 min each on 2 cores) with the report's rows and figures."""
import tomllib
from pathlib import Path

import pytest

from analysis.cli import main
from analysis.run.experiment import resolve

ROOT = Path(__file__).resolve().parents[2]
FORMS = ["paper_rbf_sphere", "paper_rbf_sphere_small", "paper_sigmoid", "paper_sigmoid_small"]


@pytest.mark.parametrize("name", FORMS)
def test_every_form_resolves(name):
    path = ROOT / "examples" / f"{name}.toml"
    cfg = tomllib.loads(path.read_text())
    exp = resolve(cfg, base=path.parent)
    assert exp.particles["realisations"] >= 3
    assert "meanfield" not in exp.config  # high dimension: the ensembles alone


@pytest.mark.slow
@pytest.mark.parametrize("name, rows, figures", [
    ("paper_rbf_sphere_small", ["final loss (4.8) vs n", "LLN without f_0"],
     {"loss_n.png", "slice.png", "great_circles.png"}),
    ("paper_sigmoid_small", ["final loss (4.8) vs n", "signed error (4.11)",
                             "loss after the quench"],
     {"loss_n.png", "training_loss.png", "great_circles.png", "signed_pos_n.png"}),
])
def test_reduced_form_end_to_end(name, rows, figures, tmp_path):
    out = tmp_path / "out"
    cfg = ROOT / "examples" / f"{name}.toml"
    assert main(["run", str(cfg), "--out", str(out), "--workers", "2", "--no-progress"]) == 0
    assert main(["report", str(out)]) == 0
    report = (out / "report.md").read_text()
    for row in rows:
        assert row in report, row
    assert figures <= {p.name for p in (out / "figures").iterdir()}
