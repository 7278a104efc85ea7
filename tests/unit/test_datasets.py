"""Dataset readers: formats, bad rows, timestamp order, stable ids."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from fusionrec.producers.datasets import CsvMapping, detect_format, load_movielens_genres, read_dataset
from tests.conftest import TAOBAO_SLICE

TAOBAO_ROWS = """1,100,7,pv,1511658001
2,200,8,buy,1511658000
3,300,9,teleport,1511658002
4,400,9,cart
5,500,9,fav,1511658003
"""


def write(tmp_path: Path, name: str, text: str, gz: bool = False) -> Path:
    path = tmp_path / name
    if gz:
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


def test_taobao_rows_map_types_sort_and_report_bad_rows(tmp_path):
    data = read_dataset(write(tmp_path, "ub.csv.gz", TAOBAO_ROWS, gz=True))
    assert data.format == "taobao" and data.rows_read == 5 and not data.was_sorted
    assert [(e.user_id, e.item_id, e.type, e.ts, e.category_id) for e in data.events] == [
        ("2", "200", "purchase", 1511658000000, "8"),
        ("1", "100", "view", 1511658001000, "7"),
        ("5", "500", "favourite", 1511658003000, "9"),
    ]
    assert [(b.line, b.reason.split(" ")[0]) for b in data.bad_rows] == [(3, "unknown"), (4, "expected")]


def test_ids_are_stable_distinct_and_limit_is_a_prefix(tmp_path):
    path = write(tmp_path, "ub.csv", TAOBAO_ROWS + "1,100,7,pv,1511658001\n")  # a repeated row on another line
    first = read_dataset(path)
    again = read_dataset(path)
    assert [e.event_id for e in first.events] == [e.event_id for e in again.events]
    assert len({e.event_id for e in first.events}) == len(first.events) == 4
    assert all(e.event_id.startswith("tb-") and len(e.event_id) == 19 for e in first.events)
    limited = read_dataset(path, limit=2)
    assert limited.events == first.events[:2]


def test_movielens_both_layouts(tmp_path):
    tab = read_dataset(write(tmp_path, "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n"))
    colon = read_dataset(write(tmp_path, "ratings.dat", "1::1193::5::978300760\n1::661::x::978302109\n"))
    assert tab.format == colon.format == "movielens"
    assert [(e.user_id, e.item_id, e.type, e.rating, e.ts) for e in tab.events] == [
        ("196", "242", "rate", 3.0, 881250949000),
        ("186", "302", "rate", 3.0, 891717742000),
    ]
    assert [(e.item_id, e.rating) for e in colon.events] == [("1193", 5.0)]
    assert colon.bad_rows[0].line == 2


def test_generic_csv_with_mapping(tmp_path):
    path = write(
        tmp_path,
        "events.csv",
        "timestamp,visitorid,event,itemid,transactionid\n"
        "1433221332117,257597,view,355908,\n1433224214164,992329,addtocart,248676,\n"
        "1433221999827,111016,transaction,318965,4000\n1433221999000,5,refund,1,\n",
    )
    mapping = CsvMapping.parse(
        "user_id=visitorid,item_id=itemid,type=event,ts=timestamp",
        "addtocart=add_to_cart,transaction=purchase",
        ts_unit="ms",
    )
    data = read_dataset(path, "csv", mapping=mapping)
    assert [(e.user_id, e.type, e.ts) for e in data.events] == [
        ("257597", "view", 1433221332117),
        ("111016", "purchase", 1433221999827),
        ("992329", "add_to_cart", 1433224214164),
    ]
    assert [b.line for b in data.bad_rows] == [5] and "refund" in data.bad_rows[0].reason
    assert detect_format(path) == "csv"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("user_id=a,item_id=b", "lacks required"),
        ("user_id=a,item_id=b,type=c,ts=d,colour=e", "unknown contract field"),
        ("user_id=a,item_id", "key=value"),
    ],
)
def test_bad_mappings_are_explained(spec, message):
    with pytest.raises(ValueError, match=message):
        CsvMapping.parse(spec)


def test_csv_needs_a_mapping_and_missing_columns_are_named(tmp_path):
    path = write(tmp_path, "e.csv", "a,b\n1,2\n")
    with pytest.raises(ValueError, match="needs a column mapping"):
        read_dataset(path, "csv")
    with pytest.raises(ValueError, match="not in the header"):
        read_dataset(path, "csv", mapping=CsvMapping.parse("user_id=a,item_id=b,type=c,ts=d"))


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_dataset(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="unknown format"):
        read_dataset(write(tmp_path, "x.csv", "1,2,3,pv,4\n"), "parquet")


def test_genres_from_u_item(tmp_path):
    flags = ["0"] * 19
    flags[5] = "1"  # Comedy
    path = write(tmp_path, "u.item", "1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(flags) + "\n")
    assert load_movielens_genres(path) == {"1": "Comedy"}


@pytest.mark.skipif(not TAOBAO_SLICE.exists(), reason="shared data not beside the repo")
def test_real_taobao_slice_head(tmp_path):
    with gzip.open(TAOBAO_SLICE, "rt") as fh:
        head = "".join(next(fh) for _ in range(2000))
    data = read_dataset(write(tmp_path, "head.csv", head))
    assert data.format == "taobao" and len(data.events) == 2000 and not data.bad_rows and data.was_sorted
    assert {e.type for e in data.events} <= {"view", "add_to_cart", "favourite", "purchase"}
