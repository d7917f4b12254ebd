import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from maskdet.data import synthetic
from maskdet.data.demographics import parse_utkface_name
from maskdet.data.synthetic import CLASSES, ensure_dataset, generate, make_spec


def _files(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*.jpg"))


def test_layout_names_and_counts(tmp_path):
    out = generate(make_spec(per_class=[3, 4, 5, 6], seed=0, size=48), tmp_path / "d")
    for name, count in zip(CLASSES, [3, 4, 5, 6]):
        files = sorted((out / name).glob("*.jpg"))
        assert len(files) == count
        for f in files:
            parsed = parse_utkface_name(f.name)
            assert parsed["gender"] != "unknown" and parsed["race"] != "unknown", f.name
            assert Image.open(f).size == (48, 48)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = generate(make_spec(per_class=4, seed=7, size=48), tmp_path / "a")
    b = generate(make_spec(per_class=4, seed=7, size=48), tmp_path / "b", workers=1)
    c = generate(make_spec(per_class=4, seed=8, size=48), tmp_path / "c")
    assert _files(a) == _files(b)
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in _files(a))
    assert _files(a) != _files(c)


def test_interrupted_generation_leaves_no_dataset_that_looks_whole(tmp_path, monkeypatch):
    spec = make_spec(per_class=3, seed=0, size=48)

    def crash(spec, out, workers=None, shown_as=None):
        (out / CLASSES[0]).mkdir(parents=True)
        (out / CLASSES[0] / "1_0_0_2017_0.jpg").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "generate", crash)
    with pytest.raises(KeyboardInterrupt):
        ensure_dataset(spec, tmp_path)
    assert not (tmp_path / "synthetic" / spec.key()).exists()
    leftovers = [p.name for p in (tmp_path / "synthetic").iterdir() if p.suffix != ".lock"]
    assert leftovers == []  # the temp folder is cleaned up too
    monkeypatch.undo()
    folder = ensure_dataset(spec, tmp_path)
    assert sum(1 for _ in folder.rglob("*.jpg")) == 12


def test_classes_are_not_separable_by_colour_statistics(tiny_dataset):
    """Mean and spread of each colour channel must not tell the mask kinds apart (chance is 25 %)."""
    features, labels = [], []
    for label, name in enumerate(CLASSES):
        for f in sorted((tiny_dataset / name).glob("*.jpg")):
            pixels = np.asarray(Image.open(f), dtype=np.float32).reshape(-1, 3) / 255
            features.append(np.concatenate([pixels.mean(0), pixels.std(0)]))
            labels.append(label)
    accuracy = cross_val_score(LogisticRegression(max_iter=2000), np.array(features), np.array(labels), cv=5).mean()
    assert accuracy < 0.6, f"colour statistics alone reach {accuracy:.2f}"


def test_bias_knob_changes_only_the_chosen_group(tmp_path):
    plain = generate(make_spec(per_class=12, seed=3, size=48), tmp_path / "plain")
    biased = generate(make_spec(per_class=12, seed=3, size=48, bias={"attribute": "gender", "group": 1, "strength": 1.0}),
                      tmp_path / "biased")
    changed = {f.name: (plain / f).read_bytes() != (biased / f).read_bytes() for f in _files(plain)}
    for name, differs in changed.items():
        assert differs == (parse_utkface_name(name)["gender"] == "female"), name


def test_cli_writes_dataset(tmp_path, capsys):
    synthetic.main(["--out", str(tmp_path / "cli"), "--per-class", "2", "--size", "40"])
    assert len(_files(tmp_path / "cli")) == 8
    assert "wrote 8 images" in capsys.readouterr().out


def test_bad_spec_is_explained():
    with pytest.raises(ValueError, match="per_class must be a positive int or 4"):
        make_spec(per_class=[1, 2])


def test_generation_reports_its_progress(tmp_path, caplog):
    from maskdet.data.synthetic import generate, make_spec

    with caplog.at_level("INFO", logger="maskdet.summary"):  # without a terminal, progress lines reach the console
        generate(make_spec(per_class=300, seed=3, size=32), tmp_path / "faces", workers=1)
    lines = [r.getMessage() for r in caplog.records if r.name == "maskdet.summary"]
    assert lines[0].startswith("generating 1,200 embedded images") and any(" % (" in line for line in lines)
    assert "done in" in lines[-1] and len(list((tmp_path / "faces").rglob("*.jpg"))) == 1200


def test_planted_label_errors_and_outliers_are_listed_beside_the_dataset(tmp_path):
    """label_noise files a share of images under a wrong class and outliers adds non-faces; planted.csv
    (beside the dataset, not in it) says which, and each flipped file is the image drawn for its true class."""
    import pandas as pd

    from maskdet.data.synthetic import INCORRECT, NOT_A_FACE, draw_image, planted_path

    spec = make_spec(per_class=60, seed=5, size=40, incorrect_wear=True, label_noise=0.1, outliers=7)
    out = ensure_dataset(spec, tmp_path)
    planted = pd.read_csv(planted_path(out))
    assert sorted(p.name for p in out.iterdir()) == sorted([*CLASSES, INCORRECT])  # nothing else inside
    assert len(_files(out)) == 5 * 60 + 7
    flipped, outliers = planted[planted.kind == "flipped"], planted[planted.kind == "outlier"]
    assert len(outliers) == 7 and set(outliers.true_label) == {NOT_A_FACE}
    assert 0.05 < len(flipped) / 300 < 0.16  # 10 % +/- sampling
    assert (flipped.given_label != flipped.true_label).all()
    for row in flipped.head(5).itertuples():
        n = int(row.path.rsplit("_", 1)[1].split(".")[0])
        name, data = draw_image(spec, spec.classes.index(row.true_label), n)
        assert row.path == f"{row.given_label}/{name}" and (out / row.path).read_bytes() == data
    assert all((out / p).is_file() for p in planted.path)
    # the options stay out of the key when off: cached datasets of older specs are still found
    assert make_spec(per_class=3, size=40).key() == make_spec(per_class=3, size=40, label_noise=0, outliers=0).key()


def test_incorrect_wear_adds_a_fifth_class_and_bad_options_are_explained(tmp_path):
    from maskdet.data.sources import read_synthetic
    from maskdet.data.synthetic import INCORRECT

    scan = read_synthetic(tmp_path, per_class=[3, 3, 3, 3], size=40, incorrect_wear=True)
    assert scan.index.label_name.value_counts().to_dict() == {**dict.fromkeys(CLASSES, 3), INCORRECT: 3}
    with pytest.raises(ValueError, match="label_noise must be a share from 0"):
        make_spec(per_class=3, label_noise=0.7)
    with pytest.raises(ValueError, match="cannot be combined with data.source.shared_faces"):
        make_spec(per_class=3, label_noise=0.1, shared_faces=2)
    with pytest.raises(ValueError, match="5 positive ints"):
        make_spec(per_class=[1, 2], incorrect_wear=True)


@pytest.mark.slow
def test_a_five_class_run_trains_tests_and_audits_the_incorrectly_worn_class(tmp_path, cache_dir):
    """mask_weared_incorrect without downloads: trained, tested, and in the bias report's per-class figures."""
    import json

    from maskdet.data.synthetic import INCORRECT
    from maskdet.train import train
    from tests.conftest import compose_train

    train(compose_train(["data.source.per_class=30", "data.source.size=48", "data.source.incorrect_wear=true",
                         "data.num_folds=3", "trainer.max_epochs=1", "~logger", "callbacks.explanations=null",
                         "bias.n_bootstrap=10"], tmp_path, cache_dir))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["tested_on"]["class_names"] == [*CLASSES, INCORRECT]
    report = (tmp_path / "classification_report.txt").read_text()
    assert INCORRECT in report and "gender" in (tmp_path / "bias_report.md").read_text()
