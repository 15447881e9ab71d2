"""The write-up (results/report.pdf) tells the product as it is: its defaults come from the
registry, its figures from results/, and the committed PDF was built from today's inputs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("reportlab", reason="the [lab] extra is not installed")

from imgsim_lab import report
from imgsim_server.config import COLLECTION_MODEL, DEFAULT_MODEL
from imgsim_server.embedders import get_cfg
from imgsim_server.errors import ModelNotFoundError

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
MODEL_NAME = re.compile(r"\b(?:efficientnet-lite\d[\w-]*|resnet[\w-]*)")


def test_the_committed_report_was_built_from_todays_inputs():
    recorded = report.recorded_digest(RESULTS / "report.pdf")
    assert recorded is not None, "results/report.pdf records no input digest: run make report"
    assert recorded == report.input_digest(RESULTS), (
        "results/report.pdf is stale: its inputs (results/*.json, the registry's defaults, "
        "imgsim_lab/report.py) changed since it was built; run `make report` and commit it"
    )


def test_the_digest_changes_with_any_input(tmp_path):
    for name in report.INPUTS:
        src = RESULTS / name
        if src.is_file():
            (tmp_path / name).write_bytes(src.read_bytes())
    facts = report.product_facts()
    before = report.input_digest(tmp_path, facts)
    (tmp_path / "faces.json").write_text("{}")
    assert report.input_digest(tmp_path, facts) != before
    changed = {**facts, "pair_model": {**facts["pair_model"], "name": "another"}}
    assert report.input_digest(tmp_path, changed) != report.input_digest(tmp_path, facts)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    pdf, text = report.build_report(RESULTS, tmp_path_factory.mktemp("r") / "report.pdf")
    return pdf, "\n".join(text)


def test_the_report_names_todays_defaults_from_the_registry(built):
    pdf, text = built
    assert f"Pairs are scored by <b>{DEFAULT_MODEL}</b>" in text
    assert f"Collections use <b>{COLLECTION_MODEL}</b>" in text
    assert f"({get_cfg(DEFAULT_MODEL).input_size} px" in text
    assert pdf.read_bytes().startswith(b"%PDF") and b"DejaVuSans" in pdf.read_bytes()


def test_every_model_the_report_names_is_registered(built):
    _, text = built
    names = set(MODEL_NAME.findall(text))
    assert DEFAULT_MODEL in names
    for name in names:
        try:
            get_cfg(name)
        except ModelNotFoundError:
            pytest.fail(f"the report names {name}, which the registry no longer has")


def test_the_generator_writes_no_model_name_or_figure_of_its_own():
    """Prose says why; the data says what. The only model name in the generator is the
    reference of the study's own rule (read from models.json), and no figure is typed in
    except the published anchors."""
    import json

    source = Path(report.__file__).read_text()
    rule = json.loads((RESULTS / "models.json").read_text())["rule"]
    for name in set(MODEL_NAME.findall(source)):
        assert name in rule, f"report.py names {name} itself"
    published = {f"{v}" for _, v in report.PUBLISHED_HOLIDAYS}
    typed = set(re.findall(r"(?<![\w.])0\.\d{3,}", source)) - published
    assert not typed, f"report.py types in figures: {sorted(typed)}"


def test_the_report_covers_the_product(built):
    _, text = built
    for section in ("What was built", "Pair scoring", "Collections", "Faces", "Performance",
                    "Reliability", "Limits", "Figure 1."):  # fmt: skip
        assert section in text, section
