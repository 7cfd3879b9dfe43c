"""Classify-many: DIGITS image lists, confined paths, scores checked against numpy, top-N.

Also that the batching (reading threads, the read-ahead cap) and the plain-path shortcut of
the list parser change no answer.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from jobs.evaluation import (
    ImageListError,
    classify_entries,
    classify_uploads,
    confusion_matrix,
    parse_image_list,
    read_image_source,
    top_n_per_category,
)
from jobs.fetch import FetchError
from jobs.inference import ImageError, load_model
from jobs.paths import PathNotAllowed, confine
from jobs.storage import LocalStore
from tests.jobs.inference_helpers import (
    HELD_OUT,
    LABELS,
    png_bytes,
    reference_probabilities,
    trained_lenet,
    write_pngs,
    write_trained,
)

COUNT = 400


@pytest.fixture()
def model(tmp_path, mnist_arrays):
    store = LocalStore(tmp_path / "store")
    return load_model(store, write_trained(store, trained_lenet(mnist_arrays)), device="cpu")


@pytest.fixture()
def digits(tmp_path, mnist_arrays):
    """400 held-out digits as PNG files under a data root, and their true labels."""
    images, labels = mnist_arrays
    root = tmp_path / "data"
    written = write_pngs(root / "digits", images[HELD_OUT][:COUNT], labels[HELD_OUT][:COUNT])
    return root, written, images[HELD_OUT][:COUNT]


def test_scores_match_numpy(model, digits, mnist_arrays) -> None:
    root, written, pixels = digits
    text = "".join(f"{path.relative_to(root / 'digits')} {label}\n" for path, label in written)
    entries = parse_image_list(text, [root], folder=str(root / "digits"), classes=10)
    assert [e.label for e in entries] == [label for _, label in written]
    assert entries[0].path == str(written[0][0])  # DIGITS keys by folder-joined path

    progress: list[tuple[int, int]] = []
    result = classify_entries(model, entries, progress=lambda d, t: progress.append((d, t)))
    answer = result.to_json(top_k=5)

    assert answer["count"] == COUNT and answer["errors"] == {}
    assert progress[-1] == (COUNT, COUNT)
    truth = np.array([label for _, label in written])
    classifications = answer["classifications"]
    predicted = np.array([LABELS.index(classifications[str(p)][0][0]) for p, _ in written])
    # the same top-1 as a plain torch forward pass on the raw pixels
    np.testing.assert_array_equal(
        predicted, reference_probabilities(trained_lenet(mnist_arrays), pixels).argmax(1)
    )

    expected = np.zeros((10, 10), dtype=np.int64)
    for t, p in zip(truth, predicted, strict=True):
        expected[t, p] += 1
    assert answer["confusionMatrix"] == expected.tolist()
    assert answer["top1Accuracy"] == pytest.approx(float((predicted == truth).mean()))
    top5 = [
        LABELS[t] in [label for label, _ in classifications[str(p)][:5]]
        for (p, _), t in zip(written, truth, strict=True)
    ]
    assert answer["top5Accuracy"] == pytest.approx(float(np.mean(top5)))
    assert answer["top5Accuracy"] >= answer["top1Accuracy"] > 0.85
    per_class = np.diag(expected) / expected.sum(axis=1)
    assert answer["perClassAccuracy"] == pytest.approx(per_class.tolist())
    assert answer["evaluated"] == COUNT
    assert answer["labels"] == LABELS


def test_confusion_matrix_rows_are_truth() -> None:
    matrix = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]


def test_top_n_per_category(model, digits) -> None:
    root, written, _ = digits
    text = "".join(f"{path}\n" for path, _ in written)  # absolute paths, no labels
    result = classify_entries(model, parse_image_list(text, [root]))
    answer = result.to_json()
    assert "confusionMatrix" not in answer  # nothing to score without labels

    top = top_n_per_category(result, n=9)
    assert [c["label"] for c in top] == LABELS
    truth = {str(path): label for path, label in written}
    for index, category in enumerate(top):
        assert len(category["images"]) == 9
        column = result.probabilities[:, index]
        expected = [result.paths[i] for i in np.argsort(-column, kind="stable")[:9]]
        assert [image["path"] for image in category["images"]] == expected
        probabilities = [image["probability"] for image in category["images"]]
        assert probabilities == sorted(probabilities, reverse=True)
        hits = sum(truth[image["path"]] == index for image in category["images"])
        assert hits >= 8, f"class {index}: only {hits} of its top 9 are that digit"


def test_unreadable_images_reported_not_fatal(model, digits, tmp_path) -> None:
    root, written, _ = digits
    broken = root / "broken.png"
    broken.write_text("not a picture")
    text = f"{written[0][0]} {written[0][1]}\n{broken} 3\n{root / 'missing.png'}\n"
    answer = classify_entries(model, parse_image_list(text, [root], classes=10)).to_json()
    assert answer["count"] == 1
    assert set(answer["errors"]) == {str(broken), str(root / "missing.png")}
    assert "not an image" in answer["errors"][str(broken)]
    assert "file not found" in answer["errors"][str(root / "missing.png")]
    assert answer["evaluated"] == 1  # only the readable, labelled image is scored


def test_uploads(model, mnist_arrays) -> None:
    images, labels = mnist_arrays
    picked = HELD_OUT[:20]
    uploads = [(f"upload-{i}.png", png_bytes(images[i])) for i in picked]
    answer = classify_uploads(model, uploads, [int(labels[i]) for i in picked]).to_json()
    assert list(answer["classifications"]) == [name for name, _ in uploads]
    assert answer["evaluated"] == 20


def test_hostile_lists_refused(model, digits, tmp_path) -> None:
    root, written, _ = digits
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.png"
    secret.write_bytes(png_bytes(np.zeros((28, 28), np.uint8)))
    (root / "escape.png").symlink_to(secret)
    (root / "escape-dir").symlink_to(outside)
    (root / "inside.png").symlink_to(written[0][0])  # a link that stays inside is fine
    inside = parse_image_list("inside.png 3\n", [root], folder=str(root))
    assert inside[0].location == str(written[0][0]) and inside[0].path == str(root / "inside.png")

    cases = {
        f"{secret} 1\n": "outside the data roots",
        f"{root}/../outside/secret.png\n": "contains '..'",
        f"{root / 'escape.png'}\n": "outside the data roots",
        f"{root / 'escape-dir' / 'secret.png'}\n": "escape-dir/secret.png .*outside the data roots",
        "relative.png\n": "must be an absolute path",
        f"{written[0][0]} 12\n": "label 12 is not a class index",
        "http://evil.example/digit.png\n": "host 'evil.example' is not an allowed host",
        "\n\n": "no images listed",
    }
    for text, message in cases.items():
        with pytest.raises(ImageListError, match=message.replace("(", r"\(")):
            parse_image_list(
                text, [root], classes=10, allowed_hosts=["images.example"] if "http" in text else ()
            )
    with pytest.raises(ImageListError, match="image_folder: .* outside the data roots"):
        parse_image_list("a.png\n", [root], folder=str(outside))
    with pytest.raises(ImageListError, match="line 2: .* outside the data roots"):
        parse_image_list(f"{written[0][0]}\n{secret}\n", [root])
    with pytest.raises(ImageListError, match="no hosts are allowed"):
        parse_image_list("https://images.example/a.png\n", [root])
    url = parse_image_list(
        "https://images.example/a.png 4\n", [root], allowed_hosts=["images.example"]
    )
    assert url[0].is_url and url[0].label == 4
    assert os.path.exists(secret)  # nothing touched


def test_classify_one_sources(model, digits, tmp_path) -> None:
    root, written, pixels = digits
    data = read_image_source(path=str(written[0][0]), roots=[root])
    got, want = model.classify_one(data), model.classify_pixels(pixels[:1][:, None])[0]
    assert [label for label, _ in got] == [label for label, _ in want]
    assert [p for _, p in got] == pytest.approx([p for _, p in want], abs=1e-6)
    np.testing.assert_array_equal(model.preprocess(data)[0], pixels[0])
    with pytest.raises(PathNotAllowed, match="image_path: /etc/passwd is outside the data roots"):
        read_image_source(path="/etc/passwd", roots=[root])
    with pytest.raises(ImageError, match="image_path: .*file not found"):
        read_image_source(path=str(root / "nothing.png"), roots=[root])
    with pytest.raises(FetchError, match="image_url: host 'example.com' is not an allowed host"):
        read_image_source(url="http://example.com/a.png", allowed_hosts=["images.example"])
    with pytest.raises(ValueError, match="exactly one of image_path and image_url"):
        read_image_source(roots=[root])


def test_reading_threads_and_prefetch_cap_change_nothing(model, digits, monkeypatch) -> None:
    root, written, _ = digits
    broken = root / "broken.png"
    broken.write_text("not a picture")
    lines = [f"{path} {label}\n" for path, label in written[:300]]
    lines[7] = f"{broken} 3\n"  # undecodable: refused by the decoding thread
    lines[150] = f"{root / 'missing.png'} 1\n"  # unreadable: refused by a reading thread
    entries = parse_image_list("".join(lines), [root], classes=10)
    model.batch_size = 64  # several batches, the last one short

    def run(threads: int) -> tuple[dict[str, object], list[tuple[int, int]]]:
        progress: list[tuple[int, int]] = []
        result = classify_entries(
            model, entries, threads=threads, progress=lambda d, t: progress.append((d, t))
        )
        return result.to_json(), progress

    expected, progress = run(2)
    assert expected["count"] == 298
    assert list(expected["errors"]) == [str(broken), str(root / "missing.png")]
    assert [done for done, _ in progress] == [64, 128, 192, 256, 300]
    for threads in (1, 3):
        assert run(threads) == (expected, progress)
    monkeypatch.setattr("jobs.evaluation.PREFETCH_BYTES", 1)  # readers stop after one image
    assert run(2) == (expected, progress)


def test_plain_paths_resolve_as_confine_does(digits, tmp_path) -> None:
    root, written, _ = digits
    folder = root / "digits"
    (root / "linked").symlink_to(folder)  # a folder link that stays inside the root
    first, label = written[0]
    relative = str(first.relative_to(folder))
    cases = [
        (str(first), None),
        (relative, str(folder)),
        (f"./{relative}", str(folder)),
        (relative.replace("/", "//"), str(folder)),
        (str(first).replace("/digits/", "/digits/./"), None),
        (str(root / "linked" / relative), None),
        (relative, str(root / "linked")),
    ]
    for path, base in cases:
        entry = parse_image_list(f"{path} {label}\n", [root], folder=base)[0]
        based = confine(base, [root]) if base else None
        assert entry.location == str(confine(path, [root], base=based)), path
        shown = str(based / path) if based is not None else path
        assert entry.path == shown, path
        assert entry.location == str(first.resolve())
