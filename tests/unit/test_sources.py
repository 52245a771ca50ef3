"""Data sources on real files: stdlib, globs with include/exclude, JSONL/CSV fields and templates,
and every kind of bad record under both policies (skip: counted and warned; error: file:line)."""

import glob
import os
from pathlib import Path

import pytest

from codex_jax.corpus import listing
from codex_jax.corpus.listing import glob_regex, list_files, select_files
from codex_jax.corpus.records import parse_template
from codex_jax.corpus.source_spec import parse_source
from codex_jax.corpus.sources import read_source, source_files
from codex_jax.errors import UserError


def test_stdlib_source_lists_python_files_without_site_packages():
    root, files = list_files(parse_source("stdlib"))
    assert len(files) > 500 and files == sorted(files)
    assert all(p.suffix == ".py" and "site-packages" not in p.parts for p in files)
    corpus = read_source("stdlib", max_files=5)
    assert len(corpus.files) == 5 and corpus.root == str(root)


def test_max_files_is_a_deterministic_subset(tmp_path):
    for i in range(12):
        (tmp_path / f"m{i}.py").write_text(f"x = {i}\n")
    source = f"{tmp_path}/*.py"
    every = [f.path for f in read_source(source).files]
    some = [f.path for f in read_source(source, max_files=7).files]
    assert len(some) == 7 and set(some) <= set(every)
    assert some == [f.path for f in read_source(source, max_files=7).files]


# --- include / exclude -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern, path, matches",
    [
        ("*.py", "a.py", True),
        ("*.py", "pkg/deep/a.py", True),  # no '/': the file name at any depth
        ("pkg/*.py", "pkg/a.py", True),
        ("pkg/*.py", "pkg/sub/a.py", False),  # '*' stays in one directory
        ("pkg/**", "pkg/sub/a.py", True),
        ("**/test_*.py", "test_a.py", True),
        ("**/test_*.py", "x/y/test_a.py", True),
        ("tests/**/*.py", "tests/a.py", True),
        ("test_?.py", "x/test_1.py", True),
        ("test_?.py", "test_12.py", False),
        ("[ab].py", "b.py", True),
        ("[!ab].py", "b.py", False),
        ("./pkg/a.py", "pkg/a.py", True),
        ("a.py", "ba.py", False),
    ],
)
def test_glob_patterns(pattern, path, matches):
    assert bool(glob_regex(pattern).match(path)) is matches


def test_include_and_exclude_filter_files_relative_to_the_root(tmp_path):
    for rel in ["a.py", "b.txt", "pkg/c.py", "pkg/test_c.py", "tests/d.py", "tests/e/f.py"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")

    def paths(include="", exclude=""):
        corpus = read_source(f"{tmp_path}/**/*", include=include, exclude=exclude)
        return sorted(f.path for f in corpus.files)

    assert paths("*.py") == ["a.py", "pkg/c.py", "pkg/test_c.py", "tests/d.py", "tests/e/f.py"]
    assert paths("*.py", "test_*.py, tests/**") == ["a.py", "pkg/c.py"]
    assert paths(exclude="*.txt,pkg/**") == ["a.py", "tests/d.py", "tests/e/f.py"]
    root, files = list_files(parse_source("stdlib"))
    kept = select_files(files, root, "json/*.py", "")
    assert kept and all(p.parent.name == "json" for p in kept)
    with pytest.raises(UserError, match=r"all 6 files are filtered out by data.include='\*.rs'"):
        paths("*.rs")


# --- text files ----------------------------------------------------------------------------------


def test_text_files_lose_bom_and_crlf_and_empty_files_hold_nothing(tmp_path):
    (tmp_path / "a.py").write_bytes(b"\xef\xbb\xbfx = 1\r\ny = 2\r\nlone\rcr\n")
    (tmp_path / "b.py").write_bytes(b"")
    (tmp_path / "c.py").write_bytes(b"  \n\r\n")
    for policy in ("skip", "error"):  # empty files are not bad records
        corpus = read_source(f"{tmp_path}/*.py", on_bad_record=policy)
        assert [d.text for d in corpus.documents] == ["x = 1\ny = 2\nlone\rcr\n"]
        assert [(f.path, f.records, f.skipped) for f in corpus.files] == [
            ("a.py", 1, 0),
            ("b.py", 0, 0),
            ("c.py", 0, 0),
        ]


# --- JSONL and CSV -------------------------------------------------------------------------------


def test_jsonl_field_with_bom_and_crlf(tmp_path):
    data = b'\xef\xbb\xbf{"text": "first\\r\\nline"}\r\n\r\n{"text": "second", "n": 1}\r\n'
    (tmp_path / "d.jsonl").write_bytes(data)
    corpus = read_source(f"jsonl:{tmp_path}/d.jsonl:text")
    assert [(d.key, d.text) for d in corpus.documents] == [
        ("d.jsonl:1", "first\nline"),
        ("d.jsonl:3", "second"),
    ]
    assert corpus.files[0].skipped == 0


def test_jsonl_template_of_fields(tmp_path):
    (tmp_path / "d.jsonl").write_text(
        '{"title": "T1", "body": "B1", "stars": 3}\n'
        '{"title": "T2", "body": "B2", "stars": 5}\n'
        '{"title": "T3"}\n'
    )
    corpus = read_source(f"jsonl:{tmp_path}/d.jsonl:# {{title}} ({{stars}})\\n{{body}}")
    assert [d.text for d in corpus.documents] == ["# T1 (3)\nB1", "# T2 (5)\nB2"]
    assert corpus.files[0].bad == ["d.jsonl:3: no field 'stars'"]
    colon = read_source(f"jsonl:{tmp_path}/d.jsonl:{{title}}: {{body}}")  # ':' in the template
    assert colon.documents[0].text == "T1: B1"


def test_templates_parse_escapes_and_reject_expressions():
    t = parse_template("{a}\\n\\t{b}\\\\{{x}}")
    assert t.fields == ["a", "b"] and t.render({"a": "1", "b": "2"}) == ("1\n\t2\\{x}", "")
    assert parse_template("text").single
    with pytest.raises(UserError, match="plain"):
        parse_template("{a.__class__}")
    with pytest.raises(UserError, match="names no"):
        parse_template("{{literal}}")


def test_csv_column_and_template(tmp_path):
    data = b'\xef\xbb\xbfid,code\r\n1,"def f():\r\n    return 1"\r\n\r\n2,plain\r\n'
    (tmp_path / "c.csv").write_bytes(data)
    corpus = read_source(f"csv:{tmp_path}/c.csv:code")
    assert [(d.key, d.text) for d in corpus.documents] == [
        ("c.csv:2", "def f():\n    return 1"),
        ("c.csv:5", "plain"),
    ]
    templated = read_source(f"csv:{tmp_path}/c.csv:# {{id}}\\n{{code}}")
    assert templated.documents[1].text == "# 2\nplain"
    with pytest.raises(UserError, match="no column 'text' in the CSV header"):
        read_source(f"csv:{tmp_path}/c.csv:text")


# --- bad records: every kind, both policies ------------------------------------------------------

# (file name, bytes, source template, line of the bad record, reason)
BAD_RECORDS = [
    ("a.jsonl", b'{"text": "ok"}\nnot json\n', "jsonl:{}:text", 2, "invalid JSON"),
    ("a.jsonl", b'{"text": "ok"}\n[1, 2]\n', "jsonl:{}:text", 2, "not a JSON object"),
    ("a.jsonl", b'{"text": "ok"}\n{"other": "x"}\n', "jsonl:{}:text", 2, "no field 'text'"),
    (
        "a.jsonl",
        b'{"text": "ok"}\n{"text": 3}\n',
        "jsonl:{}:text",
        2,
        "field 'text' is not a string",
    ),
    ("a.jsonl", b'{"text": "ok"}\n{"text": "caf\xff"}\n', "jsonl:{}:text", 2, "undecodable bytes"),
    ("a.jsonl", b'{"text": "ok"}\n{"text": "\\ud800"}\n', "jsonl:{}:text", 2, "invalid Unicode"),
    ("a.jsonl", b'{"text": "ok"}\n{"text": " \\n "}\n', "jsonl:{}:text", 2, "empty text"),
    ("a.csv", b"id,code\n1,ok\n2,\n", "csv:{}:code", 3, "empty text"),
    ("a.csv", b"id,code\n1,ok\n2\n", "csv:{}:code", 3, "no column 'code' in this row"),
    ("a.csv", b'id,code\n1,ok\n2,"caf\xff"\n', "csv:{}:code", 3, "invalid Unicode"),
    ("a.py", b"ok = 1\n\xff\xfe bad\n", "{}", 2, "undecodable bytes"),
]


@pytest.mark.parametrize(
    "name, data, template, line, reason", BAD_RECORDS, ids=[f"{b[0]}-{b[4]}" for b in BAD_RECORDS]
)
def test_bad_records_are_skipped_counted_and_warned(tmp_path, capsys, name, data, template, line, reason):
    (tmp_path / name).write_bytes(data)
    (tmp_path / "good.jsonl").write_text('{"text": "fine", "code": "fine"}\n')
    source = template.format(tmp_path / name)
    if name == "a.py":  # a text file that is bad is the whole file: add a good one
        (tmp_path / "b.py").write_text("fine = 1\n")
        source = f"{tmp_path}/*.py"
    corpus = read_source(source, on_bad_record="skip")
    report = next(f for f in corpus.files if f.path == name)
    assert report.skipped == 1 and report.bad[0].startswith(f"{name}:{line}: {reason}")
    err = capsys.readouterr().err
    assert f"skipped 1 bad record(s) in {name} (first: {name}:{line}: {reason}" in err


@pytest.mark.parametrize(
    "name, data, template, line, reason", BAD_RECORDS, ids=[f"{b[0]}-{b[4]}" for b in BAD_RECORDS]
)
def test_bad_records_stop_the_read_under_the_error_policy(tmp_path, name, data, template, line, reason):
    (tmp_path / name).write_bytes(data)
    source = template.format(tmp_path / name) if name != "a.py" else f"{tmp_path}/*.py"
    with pytest.raises(UserError, match=rf"bad record at .*{name}:{line}: {reason}.*'error'"):
        read_source(source, on_bad_record="error")


def test_only_the_first_few_bad_locations_are_kept(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "ok"}\n' + "bad\n" * 9)
    (report,) = read_source(f"jsonl:{tmp_path}/d.jsonl:text").files
    assert report.skipped == 9 and len(report.bad) == 5 and report.records == 1


# --- sources that give nothing ---------------------------------------------------------------


def test_sources_that_give_nothing_are_user_errors(tmp_path):
    (tmp_path / "empty.py").write_text("")
    with pytest.raises(UserError, match=r"data source '.*\*\.py' yielded no documents"):
        read_source(f"{tmp_path}/*.py")
    (tmp_path / "bad.jsonl").write_text("nope\n")
    with pytest.raises(
        UserError,
        match=r"yielded no documents .*1 bad records skipped; first: "
        r"bad.jsonl:1: invalid JSON",
    ):
        read_source(f"jsonl:{tmp_path}/bad.jsonl:text")
    with pytest.raises(UserError, match="file not found: .*missing.jsonl"):
        read_source(f"jsonl:{tmp_path}/missing.jsonl:text")
    with pytest.raises(UserError, match="no files match"):
        read_source(f"{tmp_path}/*.txt")
    with pytest.raises(UserError, match="jsonl:PATH:FIELD"):
        read_source("jsonl:nofield")
    with pytest.raises(UserError, match="on_bad_record must be"):
        read_source("stdlib", on_bad_record="ignore")


def test_lazy_listing_gives_the_sorted_glob_files(tmp_path):
    names = ["a.py", "a/b.py", "a/.hidden.py", ".h/c.py", "b.py", "a/b/c/d.py", "x.txt", "a b.py", "ab/e.py"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x = 1\n")
    (tmp_path / "a/sub.py").mkdir()  # a folder that matches is no file
    patterns = ["**/*.py", "*.py", "a/*.py", "**", "**/b.py", ".h/*.py", "*/*.py", "a.py", "?.py", "[ab].py"]
    patterns += ["a/**/*.py", "**/.*.py", "nothing/*.py"]
    for pattern in patterns:
        full = f"{tmp_path}/{pattern}"
        expected = sorted(Path(p) for p in glob.glob(full, recursive=True) if os.path.isfile(p))
        assert list(listing.iter_glob(full)) == expected, pattern
    spec, root, files = listing.lazy_source_files(f"{tmp_path}/**/*.py", exclude="a/**")
    assert (root, list(files)) == source_files(f"{tmp_path}/**/*.py", exclude="a/**")[1:]
    with pytest.raises(UserError, match="no files match"):
        list(listing.lazy_source_files(f"{tmp_path}/**/*.rs")[2])
