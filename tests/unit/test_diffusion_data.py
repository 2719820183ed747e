"""Diffusion preference data: joint pair transforms (exact tensors), SDXL size/crop bookkeeping, the Pick-a-Pic,
paired-folder and generic schemas, corrupt-image skipping, caption dropout and the collator layout."""

import io
import json
import logging

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from visalign.data.diffusion import (
    SKIPPED,
    DiffusionPreferenceDataset,
    collate_diffusion_pairs,
    drop_pair_captions,
    load_preference_pairs,
    pair_rngs,
)
from visalign.data.image_transforms import PairTransform, center_crop_top_left, resized_size, to_model_pixels
from visalign.models.diffusion import sdxl_time_ids


def pattern(height, width, seed):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def png(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def expected_pixels(array):
    """ToTensor + Normalize(0.5, 0.5), written out: [H, W, 3] uint8 -> [3, H, W] in [-1, 1]."""
    return torch.from_numpy(array.astype(np.float32) / 255.0 * 2.0 - 1.0).permute(2, 0, 1)


# ----------------------------------------------------------------------------------------------- transforms


def test_resize_and_center_crop_follow_torchvision_rules():
    assert resized_size(64, 96, 32) == (32, 48)
    assert resized_size(96, 64, 32) == (48, 32)
    assert resized_size(50, 77, 32) == (32, 49)  # int(32 * 77 / 50) = int(49.28)
    assert center_crop_top_left(32, 48, 32) == (0, 8)
    assert center_crop_top_left(35, 32, 32) == (2, 0)  # round(1.5) = 2


def test_pixels_are_normalised_to_minus_one_one():
    image = Image.fromarray(np.array([[[0, 51, 255]]], dtype=np.uint8))
    torch.testing.assert_close(to_model_pixels(image).flatten(), torch.tensor([-1.0, -0.6, 1.0]))


def test_center_crop_and_flip_are_the_same_for_both_images():
    chosen, rejected = pattern(4, 6, 0), pattern(4, 6, 1)
    transform = PairTransform(4, center_crop=True, random_flip=True)
    for flip in (False, True):
        out = transform(Image.fromarray(chosen), Image.fromarray(rejected), np.random.default_rng(0), flip=flip)
        view = (lambda a: a[:, ::-1]) if flip else (lambda a: a)
        # the crop is taken after the flip, at left = round((6 - 4) / 2) = 1, in the flipped frame
        torch.testing.assert_close(out.chosen, expected_pixels(view(chosen)[:, 1:5]), rtol=0, atol=0)
        torch.testing.assert_close(out.rejected, expected_pixels(view(rejected)[:, 1:5]), rtol=0, atol=0)
        assert out.crop_top_left == (0, 1) and out.flipped is flip
        assert out.original_size_chosen == out.original_size_rejected == (4, 6)


def test_random_crop_and_random_flip_are_shared_within_the_pair():
    chosen, rejected = pattern(6, 9, 2), pattern(6, 9, 3)
    transform = PairTransform(6, center_crop=False, random_flip=True)
    lefts, flips = set(), set()
    for seed in range(12):
        out = transform(Image.fromarray(chosen), Image.fromarray(rejected), np.random.default_rng(seed))
        top, left = out.crop_top_left
        view = (lambda a: a[:, ::-1]) if out.flipped else (lambda a: a)
        assert top == 0
        torch.testing.assert_close(out.chosen, expected_pixels(view(chosen)[:, left:left + 6]), rtol=0, atol=0)
        torch.testing.assert_close(out.rejected, expected_pixels(view(rejected)[:, left:left + 6]), rtol=0, atol=0)
        lefts.add(left)
        flips.add(out.flipped)
    assert len(lefts) > 1 and flips == {False, True}


def test_each_image_keeps_its_true_original_size_and_the_pair_shares_one_size():
    transform = PairTransform(4, random_flip=False)
    rng = np.random.default_rng(0)
    out = transform(Image.fromarray(pattern(8, 12, 0)), Image.fromarray(pattern(16, 24, 1)), rng)
    assert out.original_size_chosen == (8, 12) and out.original_size_rejected == (16, 24)
    assert out.chosen.shape == out.rejected.shape == (3, 4, 4)
    assert out.crop_top_left == (0, 1)  # resized to 4 x 6, centre crop
    # a partner with another aspect ratio is resized to the chosen image's resized size before the shared crop
    out = transform(Image.fromarray(pattern(8, 8, 0)), Image.fromarray(pattern(8, 16, 1)), rng)
    assert out.original_size_rejected == (8, 16) and out.rejected.shape == (3, 4, 4) and out.crop_top_left == (0, 0)


def test_resolution_must_be_a_positive_int():
    with pytest.raises(ValueError, match="resolution"):
        PairTransform(0)


# ----------------------------------------------------------------------------------------------- schemas


def pickapic_rows(labels):
    n = len(labels)
    return datasets.Dataset.from_dict({
        "jpg_0": [png(pattern(4, 4, 10 + i)) for i in range(n)],
        "jpg_1": [png(pattern(4, 4, 20 + i)) for i in range(n)],
        "label_0": labels,
        "label_1": [1 - x for x in labels],
        "caption": [f"caption {i}" for i in range(n)],
        "model_0": ["m"] * n,
    })


@pytest.fixture
def pickapic_dir(tmp_path):
    path = tmp_path / "pickapic"
    pickapic_rows([1.0, 0.0, 0.5, 1.0, 0.5]).save_to_disk(str(path))
    return path


def test_pickapic_puts_the_winner_first_and_drops_ties(pickapic_dir):
    rows = pickapic_rows([1.0, 0.0, 0.5, 1.0, 0.5])
    pairs = load_preference_pairs(str(pickapic_dir))
    assert pairs.report == {"rows": 5, "pairs": 3, "ties": 2, "ties_dropped": 2, "unlabelled_dropped": 0}
    assert len(pairs) == 3 and pairs.source_rows.tolist() == [0, 1, 3]
    # row 1 has label_0 = 0: jpg_1 won, so it is the chosen image
    assert pairs.image_refs(1) == (rows[1]["jpg_1"], rows[1]["jpg_0"])
    assert pairs.image_refs(0) == (rows[0]["jpg_0"], rows[0]["jpg_1"])
    assert pairs.image_refs(2) == (rows[3]["jpg_0"], rows[3]["jpg_1"])
    assert pairs.captions_chosen == pairs.captions_rejected == ["caption 0", "caption 1", "caption 3"]


def test_pickapic_drops_rows_relabel_left_without_a_preference(tmp_path):
    """`visalign relabel` writes label_0 = NaN where the judge's answer did not parse: such a row is no tie and no
    pair; it is dropped and counted apart, with or without keep_ties."""
    pickapic_rows([1.0, float("nan"), 0.5, 0.0]).save_to_disk(str(tmp_path / "relabelled"))
    for keep_ties, kept in ((False, [0, 3]), (True, [0, 2, 3])):
        pairs = load_preference_pairs(str(tmp_path / "relabelled"), keep_ties=keep_ties)
        assert pairs.source_rows.tolist() == kept
        assert pairs.report["unlabelled_dropped"] == 1 and pairs.report["ties"] == 1


def test_pickapic_keep_ties_keeps_jpg_0_first(pickapic_dir):
    pairs = load_preference_pairs(str(pickapic_dir), keep_ties=True)
    assert len(pairs) == 5 and pairs.report["ties_dropped"] == 0 and pairs.report["ties"] == 2
    rows = pickapic_rows([1.0, 0.0, 0.5, 1.0, 0.5])
    assert pairs.image_refs(2) == (rows[2]["jpg_0"], rows[2]["jpg_1"])


def test_pickapic_bad_labels_and_missing_columns_name_the_row_and_column(tmp_path):
    bad = tmp_path / "bad"
    pickapic_rows([1.0, 2.0]).save_to_disk(str(bad))
    with pytest.raises(ValueError, match=r"row 1: label_0=2.0"):
        load_preference_pairs(str(bad))
    no_caption = tmp_path / "nocap"
    pickapic_rows([1.0]).remove_columns("caption").save_to_disk(str(no_caption))
    with pytest.raises(ValueError, match=rf"{no_caption}: missing column\(s\) \['caption'\] for the 'pickapic'"):
        load_preference_pairs(str(no_caption))


def double_caption_rows(labels):
    """Pick-Double Caption's shape (DCPO): Pick-a-Pic columns plus ``caption_0``/``caption_1``, each describing its
    own image (``jpg_0`` / ``jpg_1``)."""
    rows = pickapic_rows(labels)
    return rows.add_column("caption_0", [f"jpg_0 of row {i}" for i in range(len(labels))]).add_column(
        "caption_1", [f"jpg_1 of row {i}" for i in range(len(labels))])


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_pick_double_caption_captions_follow_their_image_for_label_0_one_and_zero(tmp_path, fmt):
    rows = double_caption_rows([1.0, 0.0, 0.5, 0.0])
    spec = tmp_path / f"pick_double_caption.{fmt}"
    if fmt == "parquet":
        rows.to_parquet(str(spec))
    else:  # jsonl has no bytes type: images as files
        for i, row in enumerate(rows):
            for column in ("jpg_0", "jpg_1"):
                (tmp_path / f"{column}_{i}.png").write_bytes(row[column])
        rows = rows.map(lambda row, i: {c: str(tmp_path / f"{c}_{i}.png") for c in ("jpg_0", "jpg_1")},
                        with_indices=True)
        rows.to_json(str(spec))
    pairs = load_preference_pairs(str(spec), caption_0_column="caption_0", caption_1_column="caption_1")
    assert pairs.source_rows.tolist() == [0, 1, 3]  # the tie is dropped
    # label_0 = 1: jpg_0 and caption_0 are chosen; label_0 = 0: jpg_1 and caption_1 are
    assert pairs.captions_chosen == ["jpg_0 of row 0", "jpg_1 of row 1", "jpg_1 of row 3"]
    assert pairs.captions_rejected == ["jpg_1 of row 0", "jpg_0 of row 1", "jpg_0 of row 3"]
    transform = PairTransform(4, random_flip=False)
    dataset = DiffusionPreferenceDataset(pairs, transform)
    for index, (row, winner) in enumerate([(0, 0), (1, 1), (3, 1)]):
        item = dataset[index]
        loser = 1 - winner
        assert item["caption_chosen"] == f"jpg_{winner} of row {row}"
        torch.testing.assert_close(item["pixel_values_chosen"], expected_pixels(pattern(4, 4, 10 * (winner + 1) + row)),
                                   rtol=0, atol=0)
        torch.testing.assert_close(item["pixel_values_rejected"], expected_pixels(pattern(4, 4, 10 * (loser + 1) + row)),
                                   rtol=0, atol=0)


def test_per_side_caption_columns_of_the_wrong_kind_fail_naming_them(tmp_path):
    pickapic = tmp_path / "pickapic"
    double_caption_rows([1.0]).save_to_disk(str(pickapic))
    with pytest.raises(ValueError, match=r"caption_chosen_column='zw' and caption_rejected_column='zl' cannot be "
                                         r"read; .*caption_0_column and caption_1_column"):
        load_preference_pairs(str(pickapic), caption_chosen_column="zw", caption_rejected_column="zl")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['c0', 'c1'\] for the 'pickapic'"):
        load_preference_pairs(str(pickapic), caption_0_column="c0", caption_1_column="c1")
    generic = write_jsonl(tmp_path / "pairs.jsonl", [{"chosen": "a.png", "rejected": "b.png", "caption": "x"}])
    with pytest.raises(ValueError, match=r"caption_0_column='caption_0' and caption_1_column='caption_1' are "
                                         r"per-image captions of Pick-a-Pic-shaped data"):
        load_preference_pairs(str(generic), caption_0_column="caption_0", caption_1_column="caption_1")


def test_generic_schema_refuses_a_label_0_column(tmp_path):
    """Pick-a-Pic-shaped data read as generic would take jpg_0 as chosen even where label_0 = 0."""
    spec = tmp_path / "pairs.parquet"
    double_caption_rows([0.0]).to_parquet(str(spec))
    with pytest.raises(ValueError, match=r"'label_0' column, which the generic schema does not read .*pickapic"):
        load_preference_pairs(str(spec), schema="generic", chosen_column="jpg_0", rejected_column="jpg_1",
                              caption_chosen_column="caption_0", caption_rejected_column="caption_1")


def write_image(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_paired_folder_matches_by_name_counts_unmatched_and_reads_sidecars(tmp_path, caplog):
    for i, stem in enumerate(["a", "b", "c"]):
        write_image(tmp_path / "chosen" / f"{stem}.png", pattern(4, 4, i))
    for i, stem in enumerate(["a", "b", "d"]):
        write_image(tmp_path / "rejected" / f"{stem}.png", pattern(4, 4, 10 + i))
    (tmp_path / "chosen" / "a.txt").write_text("a red cat\n")
    (tmp_path / "chosen" / "b.txt").write_text("two blue squares")
    (tmp_path / "rejected" / "b.txt").write_text("one blue square")
    (tmp_path / "chosen" / "c.txt").write_text("unused")
    with caplog.at_level(logging.WARNING):
        pairs = load_preference_pairs(str(tmp_path))
    assert pairs.report["unmatched_chosen"] == 1 and pairs.report["unmatched_rejected"] == 1
    assert "c.png" in caplog.text and "d.png" in caplog.text
    assert [pairs.image_refs(i) for i in range(2)] == [("chosen/a.png", "rejected/a.png"),
                                                         ("chosen/b.png", "rejected/b.png")]
    assert pairs.captions_chosen == ["a red cat", "two blue squares"]
    assert pairs.captions_rejected == ["a red cat", "one blue square"]


def test_paired_folder_captions_jsonl_shared_and_per_side(tmp_path):
    for stem in ("x", "y"):
        write_image(tmp_path / "chosen" / f"{stem}.png", pattern(4, 4, 0))
        write_image(tmp_path / "rejected" / f"{stem}.jpg", pattern(4, 4, 1))
    lines = [{"file_name": "x.png", "caption": "a dog"},
             {"file_name": "y.png", "caption_chosen": "a tree", "caption_rejected": "a house"}]
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    pairs = load_preference_pairs(str(tmp_path))
    assert pairs.captions_chosen == ["a dog", "a tree"] and pairs.captions_rejected == ["a dog", "a house"]
    assert pairs.image_refs(0) == ("chosen/x.png", "rejected/x.jpg")


def test_paired_folder_without_a_caption_names_the_file(tmp_path):
    write_image(tmp_path / "chosen" / "x.png", pattern(4, 4, 0))
    write_image(tmp_path / "rejected" / "x.png", pattern(4, 4, 1))
    with pytest.raises(ValueError, match=r"1 pair\(s\) have no caption .*x\.png"):
        load_preference_pairs(str(tmp_path))
    (tmp_path / "captions.jsonl").write_text('{"file_name": "x.png", "caption": "ok"}\n{oops\n')
    with pytest.raises(ValueError, match=r"captions.jsonl line 2: not valid JSON"):
        load_preference_pairs(str(tmp_path))
    (tmp_path / "captions.jsonl").unlink()
    (tmp_path / "chosen" / "x.txt").write_bytes("a\ncaf\u00e9".encode("latin-1"))
    with pytest.raises(ValueError, match=r"chosen/x\.txt line 2: not UTF-8 text"):
        load_preference_pairs(str(tmp_path))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_generic_jsonl_with_relative_paths_per_side_captions_and_weights(tmp_path):
    write_image(tmp_path / "img" / "w.png", pattern(4, 4, 0))
    write_image(tmp_path / "img" / "l.png", pattern(4, 4, 1))
    spec = write_jsonl(tmp_path / "pairs.jsonl", [
        {"win": "img/w.png", "lose": "img/l.png", "zw": "a cat", "zl": "a dog", "score": 0.25}])
    pairs = load_preference_pairs(str(spec), chosen_column="win", rejected_column="lose",
                                  caption_chosen_column="zw", caption_rejected_column="zl", weight_column="score")
    assert pairs.base_dir == tmp_path and pairs.weights == [0.25]
    assert pairs.captions_chosen == ["a cat"] and pairs.captions_rejected == ["a dog"]
    item = DiffusionPreferenceDataset(pairs, PairTransform(4, random_flip=False))[0]
    torch.testing.assert_close(item["pixel_values_chosen"], expected_pixels(pattern(4, 4, 0)), rtol=0, atol=0)
    torch.testing.assert_close(item["pixel_values_rejected"], expected_pixels(pattern(4, 4, 1)), rtol=0, atol=0)
    assert item["weight"] == 0.25


def test_generic_missing_columns_fail_naming_the_column_and_source(tmp_path):
    spec = write_jsonl(tmp_path / "pairs.jsonl", [{"chosen": "a.png", "rejected": "b.png", "prompt": "x"}])
    with pytest.raises(ValueError, match=rf"{spec}: missing column\(s\) \['caption'\] for the 'generic'"):
        load_preference_pairs(str(spec))
    with pytest.raises(ValueError, match="caption_rejected_column"):
        load_preference_pairs(str(spec), caption_chosen_column="prompt")


def test_generic_datasets_image_feature_and_bytes(tmp_path):
    images = [Image.fromarray(pattern(4, 4, i)) for i in range(2)]
    table = datasets.Dataset.from_dict({"chosen": [images[0]], "rejected": [png(pattern(4, 4, 1))],
                                        "caption": ["x"]}).cast_column("chosen", datasets.Image())
    table.save_to_disk(str(tmp_path / "ds"))
    pairs = load_preference_pairs(str(tmp_path / "ds"))
    item = DiffusionPreferenceDataset(pairs, PairTransform(4, random_flip=False))[0]
    torch.testing.assert_close(item["pixel_values_chosen"], expected_pixels(pattern(4, 4, 0)), rtol=0, atol=0)
    torch.testing.assert_close(item["pixel_values_rejected"], expected_pixels(pattern(4, 4, 1)), rtol=0, atol=0)


def test_generic_paths_that_all_miss_raise_naming_the_base_dir(tmp_path):
    spec = write_jsonl(tmp_path / "pairs.jsonl", [{"chosen": "nope.png", "rejected": "gone.png", "caption": "x"}])
    with pytest.raises(FileNotFoundError, match="none of the 2 image paths exist"):
        load_preference_pairs(str(spec))


def test_pickapic_image_paths_resolve_against_the_file_folder_and_missing_ones_are_counted(tmp_path, monkeypatch,
                                                                                          caplog):
    data = tmp_path / "data"
    write_image(data / "img" / "a.png", pattern(4, 4, 0))
    write_image(data / "img" / "b.png", pattern(4, 4, 1))
    spec = write_jsonl(data / "pick.jsonl", [
        {"jpg_0": "img/a.png", "jpg_1": "img/b.png", "label_0": 0.0, "caption": "x"},
        {"jpg_0": "img/a.png", "jpg_1": "img/gone.png", "label_0": 1.0, "caption": "y"}])
    monkeypatch.chdir(tmp_path)  # not the file's folder: relative paths must not resolve against it
    with caplog.at_level(logging.WARNING):
        pairs = load_preference_pairs(str(spec))
    assert pairs.base_dir == data and pairs.report["missing_images"] == 1
    assert "1 image file(s) do not exist" in caplog.text and str(data / "img" / "gone.png") in caplog.text
    item = DiffusionPreferenceDataset(pairs, PairTransform(4, random_flip=False))[0]
    torch.testing.assert_close(item["pixel_values_chosen"], expected_pixels(pattern(4, 4, 1)), rtol=0, atol=0)
    spec.write_text(json.dumps({"jpg_0": "img/x.png", "jpg_1": "img/y.png", "label_0": 1.0, "caption": "x"}) + "\n")
    with pytest.raises(FileNotFoundError, match=rf"none of the 2 image paths exist .*resolved against {data}"):
        load_preference_pairs(str(spec))


def test_confine_image_paths_refuses_paths_outside_the_dataset_folder(tmp_path):
    data = tmp_path / "data"
    write_image(data / "in.png", pattern(4, 4, 0))
    write_image(tmp_path / "outside.png", pattern(4, 4, 1))
    (data / "link.png").symlink_to(tmp_path / "outside.png")
    for escaping in (str(tmp_path / "outside.png"), "../outside.png", "link.png"):
        spec = write_jsonl(data / "pairs.jsonl", [{"chosen": "in.png", "rejected": "in.png", "caption": "x"},
                                                  {"chosen": "in.png", "rejected": escaping, "caption": "x"}])
        assert len(load_preference_pairs(str(spec))) == 2  # the default: paths may point anywhere
        with pytest.raises(ValueError, match=rf"pairs\.jsonl row 1, column 'rejected': image path '{escaping}' is "
                                             rf"outside the dataset folder {data}"):
            load_preference_pairs(str(spec), confine_image_paths=True)
    spec = write_jsonl(data / "pairs.jsonl", [{"chosen": "in.png", "rejected": "./in.png", "caption": "x"}])
    pairs = load_preference_pairs(str(spec), confine_image_paths=True)
    assert SKIPPED not in DiffusionPreferenceDataset(pairs, PairTransform(4))[0]


def test_unknown_schema_is_refused():
    with pytest.raises(ValueError, match="unknown diffusion data schema 'kohya'"):
        load_preference_pairs("x", schema="kohya")


# ----------------------------------------------------------------------------------------------- dataset + collator


def test_corrupt_truncated_and_missing_images_are_skipped_and_counted(tmp_path, caplog):
    good = png(pattern(4, 4, 0))
    (tmp_path / "ok.png").write_bytes(good)
    (tmp_path / "garbage.png").write_bytes(b"not an image at all")
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 2])
    rows = [{"chosen": "ok.png", "rejected": "ok.png", "caption": "fine"},
            {"chosen": "garbage.png", "rejected": "ok.png", "caption": "bad"},
            {"chosen": "ok.png", "rejected": "truncated.png", "caption": "bad"},
            {"chosen": "ok.png", "rejected": "missing.png", "caption": "bad"},
            {"chosen": "ok.png", "rejected": "ok.png", "caption": "fine too"}]
    pairs = load_preference_pairs(str(write_jsonl(tmp_path / "pairs.jsonl", rows)))
    assert pairs.report["missing_images"] == 1
    dataset = DiffusionPreferenceDataset(pairs, PairTransform(4, random_flip=False))
    with caplog.at_level(logging.WARNING):
        items = [dataset[i] for i in range(len(dataset))]
    assert [SKIPPED in item for item in items] == [False, True, True, True, False]
    assert dataset.num_skipped == 3 and "row 1: unreadable image skipped" in caplog.text
    batch = collate_diffusion_pairs(items)
    assert batch["num_pairs"] == 2 and batch["num_skipped"] == 3
    assert batch["captions_chosen"] == ["fine", "fine too"] and batch["pixel_values"].shape == (4, 3, 4, 4)
    empty = collate_diffusion_pairs(items[1:4])
    assert empty["num_pairs"] == 0 and empty["num_skipped"] == 3 and "pixel_values" not in empty


def test_collator_layout_is_chosen_then_rejected_with_sdxl_time_ids(tmp_path):
    for i in range(2):
        write_image(tmp_path / f"c{i}.png", pattern(8, 12, i))
        write_image(tmp_path / f"r{i}.png", pattern(16, 24, 10 + i))
    rows = [{"chosen": f"c{i}.png", "rejected": f"r{i}.png", "caption": f"p{i}", "w": float(i + 1)}
            for i in range(2)]
    pairs = load_preference_pairs(str(write_jsonl(tmp_path / "pairs.jsonl", rows)), weight_column="w")
    dataset = DiffusionPreferenceDataset(pairs, PairTransform(4, random_flip=False))
    items = [dataset[0], dataset[1]]
    batch = collate_diffusion_pairs(items)
    for row, (i, side) in enumerate([(0, "chosen"), (1, "chosen"), (0, "rejected"), (1, "rejected")]):
        torch.testing.assert_close(batch["pixel_values"][row], items[i][f"pixel_values_{side}"], rtol=0, atol=0)
    assert batch["original_sizes"].tolist() == [[8, 12], [8, 12], [16, 24], [16, 24]]
    assert batch["crop_top_lefts"].tolist() == [[0, 1]] * 4
    assert batch["weights"].tolist() == [1.0, 2.0]
    time_ids = sdxl_time_ids(batch["original_sizes"], batch["crop_top_lefts"], (4, 4))
    assert time_ids.tolist() == [[8, 12, 0, 1, 4, 4]] * 2 + [[16, 24, 0, 1, 4, 4]] * 2


def test_caption_dropout_rate_and_seeding():
    def mask(seed, epoch, p=0.2, n=4000):
        return np.array([drop_pair_captions("a", "b", p, pair_rngs(seed, epoch, i)[0]) == ("", "")
                         for i in range(n)])

    dropped = mask(0, 0)
    assert abs(dropped.mean() - 0.2) < 0.03  # 4.7 standard errors of a Bernoulli(0.2) mean over 4000 draws
    assert (mask(0, 0) == dropped).all()
    assert (mask(1, 0) != dropped).any() and (mask(0, 1) != dropped).any()
    assert not mask(0, 0, p=0.0).any() and mask(0, 0, p=1.0).all()


def test_dataset_drops_both_captions_of_a_pair_reproducibly(tmp_path):
    write_image(tmp_path / "x.png", pattern(4, 4, 0))
    rows = [{"chosen": "x.png", "rejected": "x.png", "zw": f"w{i}", "zl": f"l{i}"} for i in range(40)]
    pairs = load_preference_pairs(str(write_jsonl(tmp_path / "pairs.jsonl", rows)),
                                  caption_chosen_column="zw", caption_rejected_column="zl")

    def captions(seed, epoch):
        dataset = DiffusionPreferenceDataset(pairs, PairTransform(4), caption_dropout=0.5, seed=seed)
        dataset.set_epoch(epoch)
        return [(item["caption_chosen"], item["caption_rejected"]) for item in map(dataset.__getitem__, range(40))]

    first = captions(3, 0)
    assert all(c == (f"w{i}", f"l{i}") or c == ("", "") for i, c in enumerate(first))
    assert 0 < sum(c == ("", "") for c in first) < 40
    assert captions(3, 0) == first and captions(3, 1) != first and captions(4, 0) != first
    with pytest.raises(ValueError, match="caption_dropout must be in"):
        DiffusionPreferenceDataset(pairs, PairTransform(4), caption_dropout=1.5)


def test_dataloader_workers_give_the_same_batches_as_the_main_process(tmp_path):
    for i in range(4):
        write_image(tmp_path / f"{i}.png", pattern(6, 9, i))
    rows = [{"chosen": f"{i}.png", "rejected": f"{(i + 1) % 4}.png", "caption": f"c{i}"} for i in range(4)]
    pairs = load_preference_pairs(str(write_jsonl(tmp_path / "pairs.jsonl", rows)))
    dataset = DiffusionPreferenceDataset(pairs, PairTransform(6, center_crop=False), caption_dropout=0.5, seed=7)

    def batches(workers):
        loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=workers,
                                             collate_fn=collate_diffusion_pairs)
        return list(loader)

    for a, b in zip(batches(0), batches(2)):
        assert a["captions_chosen"] == b["captions_chosen"] and a["crop_top_lefts"].equal(b["crop_top_lefts"])
        torch.testing.assert_close(a["pixel_values"], b["pixel_values"], rtol=0, atol=0)
