"""`prepare` for Criteo (Kaggle TSV / CSV with header): every id against a plain-Python computation on
the real head sample, the seeded 8:1:1 split, CSV = TSV, every bad input, skip mode, determinism."""
from __future__ import annotations

import csv
import gzip
import hashlib
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tf4ctr_fast.config import DatasetConfig
from tf4ctr_fast.data import engine, vocab
from tf4ctr_fast.data.columns import IntVocab, load_prepared
from tf4ctr_fast.data.criteo import prepare_criteo
from tf4ctr_fast.data.engine import ratio_split
from tf4ctr_fast.data.prepare import prepare
from tf4ctr_fast.errors import InputError

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "criteo_samples"
HEAD = SAMPLES / "criteo_kaggle_head1000.tsv"
CSV10K = SAMPLES / "criteo_sample_10k.csv.gz"
needs_samples = pytest.mark.skipif(not HEAD.exists(), reason="../shared/data/criteo_samples not present")
FILES = {"split": {"by": "files"}}
NAMES = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]

# Three hand-made Kaggle rows: missing values, a negative, a short row (trailing fields cut).
TINY = ("1\t5\t-2\t\t3\t0\t1\t2\t100\t\t\t\t1\t7\t" + "\t".join(["0a1b2c3d"] * 26) + "\n"
        "0\t\t0\t10\t\t1\t\t\t\t\t\t\t\t\t" + "\t".join(["0a1b2c3d", ""] * 13) + "\n"
        "0\t5\t-2\t1\t3\t0\t1\t2\t100\t1\t1\t1\t1\t7\tffffffff\n")


# ------------------------------------------------------------------------------------------------
# The hand computation: plain Python, one row at a time.


def raw_rows(lines: list[str]) -> list[list[str]]:
    """Token text of every field (short rows padded with missing)."""
    return [(line.split("\t") + [""] * 40)[:40] for line in lines]


def token(j: int, text: str) -> str:
    """What the vocabulary sees for field j (1..13 dense, 14.. categorical): the bucket or the hex."""
    if j > 13 or text == "":
        return text
    v = float(text)
    return str(math.floor(math.log(v) ** 2) if v > 2 else int(v))


def sort_key(j: int, text: str):
    # missing first, then numeric order (dense) or text order (8-digit hex)
    return (text != "", int(text) if j <= 13 and text else text)


def hand_vocab(rows: list[list[str]], min_count: int) -> list[dict[str, int]]:
    vocabs = []
    for j in range(1, 40):
        counts = Counter(token(j, r[j]) for r in rows)
        known = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: sort_key(j, t))
        vocabs.append({t: i + 2 for i, t in enumerate(known)})
    return vocabs


def hand_ids(rows: list[list[str]], vocabs: list[dict[str, int]]) -> list[list[int]]:
    return [[vocabs[j - 1].get(token(j, r[j]), 1) for j in range(1, 40)] for r in rows]


def _cfg(train: Path, **kw) -> DatasetConfig:
    return DatasetConfig(name="criteo", format="criteo", train=str(train), min_count=kw.pop("min_count", 10), **kw)


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------


def test_buckets_and_missing_tokens_on_hand_made_rows(tmp_path):
    (tmp_path / "t.tsv").write_text(TINY)
    ds = load_prepared(prepare_criteo(_cfg(tmp_path / "t.tsv", min_count=1), tmp_path / "out", schema=FILES))
    fields = ds.schema["fields"]
    # I1: 5 -> floor(ln 5 ^ 2) = 2, missing ""; I2: -2 stays -2 and 0 stays 0; I8 100 -> floor(21.2) = 21
    assert fields[0]["vocab"] == {"": 2, "2": 3}
    assert fields[1]["vocab"] == {"-2": 2, "0": 3}
    assert fields[7]["vocab"] == {"": 2, "21": 3}
    assert fields[2]["vocab"] == {"": 2, "1": 3, "5": 4}       # 10 -> floor(5.30) = 5, 1 stays 1
    assert fields[13]["vocab"] == {"0a1b2c3d": 2, "ffffffff": 3}
    assert fields[14]["vocab"] == {"": 2, "0a1b2c3d": 3}       # the short row's C2 is missing
    train = ds.split("train")
    assert train.labels.tolist() == [1, 0, 0]
    assert train.ids[:, 0].tolist() == [3, 2, 3] and train.ids[:, 13].tolist() == [2, 2, 3]
    assert train.ids[2, 14:].tolist() == [2] * 25                # cut fields read as missing
    assert all(f["codec"] == ("int" if i < 13 else "hex") for i, f in enumerate(fields))


@needs_samples
@pytest.mark.parametrize("min_count", [10, 1])
def test_kaggle_head_every_id_matches_plain_python(tmp_path, min_count):
    rows = raw_rows(HEAD.read_text().splitlines())
    ds = load_prepared(prepare_criteo(_cfg(HEAD, min_count=min_count), tmp_path / "out", schema=FILES))
    vocabs = hand_vocab(rows, min_count)
    assert ds.field_names == NAMES[1:]
    assert ds.vocab_sizes == [len(v) + 2 for v in vocabs]
    assert [f["vocab"] for f in ds.schema["fields"]] == vocabs
    train = ds.split("train")
    assert train.ids.tolist() == hand_ids(rows, vocabs)
    assert train.labels.tolist() == [int(r[0]) for r in rows]
    assert ds.schema["splits"] == {"train": 1000}
    # the rule spelled out, so that one mistake made in both implementations cannot agree
    assert token(5, "1382") == "52" and token(2, "-1") == "-1" and token(1, "2") == "2" and token(1, "3") == "1"
    assert rows[0][5] == "1382" and train.ids[0, 4] == vocabs[4]["52"]
    assert "" in vocabs[0] and train.ids[0, 11] == vocabs[11][""]   # row 1 has no I12


@needs_samples
def test_seeded_8_1_1_split(tmp_path):
    rows = raw_rows(HEAD.read_text().splitlines())
    cfg = _cfg(HEAD, seed=7)
    ds = load_prepared(prepare_criteo(cfg, tmp_path / "a"))
    assert ds.schema["splits"] == {"train": 800, "valid": 100, "test": 100}
    assert ds.schema["options"]["split"] == {"by": "ratio", "ratios": [0.8, 0.1, 0.1], "seed": 7}
    split, rank = ratio_split(1000, (0.8, 0.1, 0.1), seed=7)
    assert np.bincount(split).tolist() == [800, 100, 100]
    members = [sorted(np.flatnonzero(split == s), key=lambda r: rank[r]) for s in range(3)]
    vocabs = hand_vocab([rows[r] for r in members[0]], 10)   # fitted on train rows only
    assert ds.vocab_sizes == [len(v) + 2 for v in vocabs]
    for s, name in enumerate(("train", "valid", "test")):
        part = ds.split(name)
        assert part.ids.tolist() == hand_ids([rows[r] for r in members[s]], vocabs)
        assert part.labels.tolist() == [int(rows[r][0]) for r in members[s]]
    # the order inside a split is shuffled too, and the seed decides it
    assert members[0] != sorted(members[0])
    other = load_prepared(prepare_criteo(_cfg(HEAD, seed=8), tmp_path / "b"))
    assert other.split("valid").labels.tolist() != ds.split("valid").labels.tolist() or \
        other.split("valid").ids.tolist() != ds.split("valid").ids.tolist()


@needs_samples
def test_csv_with_float_dense_values_reads_like_the_tsv(tmp_path):
    with gzip.open(CSV10K, "rt") as f:
        head = [next(f) for _ in range(1001)]                 # header + the same 1000 rows as HEAD
    (tmp_path / "head.csv").write_text("".join(head))
    assert "1382.0" in head[1]
    tsv = load_prepared(prepare_criteo(_cfg(HEAD), tmp_path / "tsv", schema=FILES))
    csv_ds = load_prepared(prepare_criteo(_cfg(tmp_path / "head.csv"), tmp_path / "csv", schema=FILES))
    assert csv_ds.schema["options"]["layout"]["delimiter"] == "," and csv_ds.schema["options"]["layout"]["header"]
    assert [f["vocab"] for f in csv_ds.schema["fields"]] == [f["vocab"] for f in tsv.schema["fields"]]
    np.testing.assert_array_equal(csv_ds.split("train").ids, tsv.split("train").ids)
    np.testing.assert_array_equal(csv_ds.split("train").labels, tsv.split("train").labels)


@needs_samples
def test_csv_10k_gzip_vocab_sizes_by_hand(tmp_path):
    with gzip.open(CSV10K, "rt") as f:
        table = list(csv.reader(f))
    assert table[0] == NAMES
    rows = [[c if j == 0 or j > 13 or c == "" else str(int(float(c))) for j, c in enumerate(r)] for r in table[1:]]
    ds = load_prepared(prepare_criteo(_cfg(CSV10K), tmp_path / "out", schema=FILES))
    vocabs = hand_vocab(rows, 10)
    assert ds.vocab_sizes == [len(v) + 2 for v in vocabs]
    assert ds.split("train").ids[:50].tolist() == hand_ids(rows[:50], vocabs)
    assert ds.schema["splits"] == {"train": 9999}


def test_large_vocabulary_lookup_matches_a_dict():
    # large tables take the distinct-keys path of IntVocab.encode (it once recursed forever)
    rng = np.random.default_rng(0)
    known = np.unique(rng.integers(-10**12, 10**12, 50_000))
    table = IntVocab(known)
    queries = np.concatenate([rng.choice(known, 60_000), rng.integers(-10**12, 10**12, 20_000)]).reshape(400, 200)
    ids = {int(k): i + 2 for i, k in enumerate(known)}
    assert table.encode(queries).tolist() == [[ids.get(int(q), 1) for q in row] for row in queries]


def test_through_prepare_and_config_format_key(tmp_path):
    (tmp_path / "t.tsv").write_text(TINY * 4)
    cfg = _cfg(tmp_path / "t.tsv", min_count=1)
    ds = load_prepared(prepare(cfg, tmp_path / "out", progress=False))
    assert ds.schema["options"]["format"] == "criteo" and sum(ds.schema["splits"].values()) == 12


def test_gzip_input_reads_like_plain_and_gives_identical_folders(tmp_path):
    text = TINY * 50
    (tmp_path / "t.tsv").write_text(text)
    (tmp_path / "t.tsv.gz").write_bytes(gzip.compress(text.encode()))
    a = prepare_criteo(_cfg(tmp_path / "t.tsv", min_count=2), tmp_path / "a")
    b = prepare_criteo(_cfg(tmp_path / "t.tsv.gz", min_count=2), tmp_path / "b", chunk_bytes=1000, workers=1)
    c = prepare_criteo(_cfg(tmp_path / "t.tsv", min_count=2), tmp_path / "c", chunk_bytes=300, workers=1)
    ha, hb, hc = _hashes(a), _hashes(b), _hashes(c)
    assert {k: v for k, v in ha.items() if k != "schema.json"} == {k: v for k, v in hb.items() if k != "schema.json"}
    assert ha == hc  # chunking never shows in the output
    assert ha == _hashes(prepare_criteo(_cfg(tmp_path / "t.tsv", min_count=2), tmp_path / "d"))


@needs_samples
@pytest.mark.slow
def test_two_workers_and_tiny_chunks_give_the_same_folder(tmp_path):
    one = prepare_criteo(_cfg(HEAD, min_count=2), tmp_path / "one", workers=1)
    two = prepare_criteo(_cfg(HEAD, min_count=2), tmp_path / "two", workers=2, chunk_bytes=20_000)
    assert _hashes(one) == _hashes(two)


# (description, text of the file, words in the message, line named)
GOOD = "0\t1\t2\t3\t4\t5\t6\t7\t8\t9\t10\t11\t12\t13\t" + "\t".join(["68fd1e64"] * 26)
BAD_INPUTS = {
    "too many fields": (GOOD + "\n" + GOOD + "\t5\n", "expected 14 to 40 tab-separated fields, found 41", 2),
    "too few fields": ("\n".join([GOOD, GOOD, "1\t2\t3"]) + "\n", "found 3", 3),
    "non-numeric integer": (GOOD + "\n" + GOOD.replace("\t7\t", "\tseven\t") + "\n", "'I7': 'seven' is not an integer (rule log2)", 2),
    "label not 0/1": ("\n" + GOOD.replace("0", "2", 1) + "\n", "'label': '2' is not a label", 2),
    "empty label": (GOOD + "\n" + GOOD[1:] + "\n", "'label': '' is not a label", 2),
    "bad hex": (GOOD + "\n" + GOOD.replace("68fd1e64", "68fd1e6x", 1) + "\n", "'C1': '68fd1e6x' is not a hex", 2),
    "quoted": (GOOD.replace("68fd1e64", '"68fd1e64"', 1) + "\n", "'C1': '\"68fd1e64\"' is not a hex", 1),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_names_file_and_line_and_writes_nothing(tmp_path, case):
    text, words, line = BAD_INPUTS[case]
    (tmp_path / "t.tsv").write_text(text)
    with pytest.raises(InputError) as err:
        prepare_criteo(_cfg(tmp_path / "t.tsv"), tmp_path / "out", schema=FILES)
    assert f"{tmp_path / 't.tsv'}:{line}: " in str(err.value), str(err.value)
    assert words in str(err.value), str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.tsv"]


def test_first_bad_line_in_file_order_across_chunks(tmp_path):
    rows = [GOOD] * 300
    rows[123] = rows[123].replace("\t7\t", "\tx\t")
    rows[250] = "1\t2"
    (tmp_path / "t.tsv").write_text("\n".join(rows) + "\n")
    with pytest.raises(InputError, match=re.escape(f"{tmp_path / 't.tsv'}:124: column 'I7': 'x'")):
        prepare_criteo(_cfg(tmp_path / "t.tsv"), tmp_path / "out", schema=FILES, chunk_bytes=2000)


def test_unreadable_gzip_names_line(tmp_path):
    text = "".join(GOOD.replace("13", str(i)) + "\n" for i in range(20000))
    (tmp_path / "t.tsv.gz").write_bytes(gzip.compress(text.encode())[:-3000])
    with pytest.raises(InputError) as err:
        prepare_criteo(_cfg(tmp_path / "t.tsv.gz"), tmp_path / "out", schema=FILES)
    found = re.search(re.escape(str(tmp_path / "t.tsv.gz")) + r":(\d+): unreadable gzip", str(err.value))
    assert found and int(found.group(1)) > 1000, str(err.value)
    (tmp_path / "u.tsv.gz").write_text(GOOD)
    with pytest.raises(InputError, match=re.escape(f"{tmp_path / 'u.tsv.gz'}:1: unreadable gzip")):
        prepare_criteo(_cfg(tmp_path / "u.tsv.gz"), tmp_path / "out2")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


def test_empty_split_and_empty_file(tmp_path):
    (tmp_path / "t.tsv").write_text(GOOD + "\n" + GOOD + "\n")   # 8:1:1 of 2 rows leaves valid empty
    with pytest.raises(InputError, match=re.escape(f"{tmp_path / 't.tsv'}: split 'valid' would be empty")):
        prepare_criteo(_cfg(tmp_path / "t.tsv"), tmp_path / "out")
    (tmp_path / "e.tsv").write_text("")
    with pytest.raises(InputError, match=re.escape(f"{tmp_path / 'e.tsv'}: no data rows")):
        prepare_criteo(_cfg(tmp_path / "e.tsv"), tmp_path / "out", schema=FILES)
    (tmp_path / "v.tsv").write_text("\n\n")
    cfg = _cfg(tmp_path / "t.tsv", valid=str(tmp_path / "v.tsv"))
    with pytest.raises(InputError, match=re.escape(f"{tmp_path / 'v.tsv'}: no data rows")):
        prepare_criteo(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_vocabulary_overflowing_int32_names_field_and_file(tmp_path, monkeypatch):
    monkeypatch.setattr(vocab, "MAX_IDS", 4)  # 2 known values + padding + OOV fit, 3 do not
    rows = [GOOD.replace("\t1\t", f"\t{v}\t", 1) for v in (1, 1, 2, 2, 100, 100)]   # buckets 1, 2, 21
    (tmp_path / "t.tsv").write_text("\n".join(rows) + "\n")
    with pytest.raises(InputError, match=re.escape(f"{tmp_path / 't.tsv'}: field 'I1': 3 known values overflow int32")):
        prepare_criteo(_cfg(tmp_path / "t.tsv", min_count=2), tmp_path / "out", schema=FILES)


def test_skip_bad_rows_counts_them_in_the_report(tmp_path):
    rows = [GOOD] * 12
    rows[3] = "1\t2"
    rows[7] = rows[7].replace("0", "5", 1)
    (tmp_path / "t.tsv").write_text("\n".join(rows) + "\n")
    cfg = _cfg(tmp_path / "t.tsv", min_count=1)
    ds = load_prepared(prepare_criteo(cfg, tmp_path / "out", schema={"on_bad_row": "skip", **FILES}))
    report = ds.schema["report"]
    assert report["skipped_rows"] == 2 and ds.schema["splits"] == {"train": 10}
    assert report["skipped_examples"][0].startswith(f"{tmp_path / 't.tsv'}:4: expected 14 to 40")
    assert report["skipped_examples"][1].startswith(f"{tmp_path / 't.tsv'}:8: column 'label'")
    # ratio split: the skipped rows leave no holes
    rows = [GOOD] * 40
    rows[5] = "x"
    (tmp_path / "r.tsv").write_text("\n".join(rows) + "\n")
    ds = load_prepared(prepare_criteo(_cfg(tmp_path / "r.tsv", min_count=1), tmp_path / "r",
                                      schema={"on_bad_row": "skip"}))
    assert sum(ds.schema["splits"].values()) == 39
    assert all((ds.split(s).ids >= 2).all() for s in ds.schema["splits"])


def test_bad_options_name_their_key(tmp_path):
    (tmp_path / "t.tsv").write_text(GOOD + "\n")
    for schema, words in (({"on_bad_row": "ignore"}, "'on_bad_row'"), ({"columns": []}, "'columns' is unknown"),
                          ({"split": {"by": "time", "column": "t"}}, "no time column"),
                          ({"split": {"by": "ratio", "ratios": [0.8, 0]}}, "'split.ratios'")):
        with pytest.raises(InputError, match=words):
            prepare_criteo(_cfg(tmp_path / "t.tsv"), tmp_path / "out", schema=schema)
    with pytest.raises(InputError, match="'dataset.group_field'"):
        prepare_criteo(_cfg(tmp_path / "t.tsv", group_field="C1"), tmp_path / "out")
    with pytest.raises(InputError, match="'dataset.valid'"):
        prepare_criteo(_cfg(tmp_path / "t.tsv", valid=str(tmp_path / "t.tsv")), tmp_path / "out",
                       schema={"split": {"by": "ratio"}})


def test_crash_while_writing_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    (tmp_path / "t.tsv").write_text(TINY * 30)
    prepare_criteo(_cfg(tmp_path / "t.tsv", min_count=1), tmp_path / "out", schema=FILES)
    before = _hashes(tmp_path / "out")
    calls = []

    def crash(task):
        calls.append(task)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(task)

    real = engine._write_chunk
    monkeypatch.setattr(engine, "_write_chunk", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare_criteo(_cfg(tmp_path / "t.tsv", min_count=2), tmp_path / "out", schema=FILES, chunk_bytes=500,
                       workers=1)
    assert _hashes(tmp_path / "out") == before          # the old complete folder is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "t.tsv"]   # no temp folder left
