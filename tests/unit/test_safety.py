"""Safety policies: the default rules, YAML policies, linear-time matching, the data filter, the
output filter and ``codex-jax safety scan``."""

from __future__ import annotations

import json
import time

import pytest

from codex_jax.corpus.sources import read_source
from codex_jax.corpus.splits import corpus_manifest
from codex_jax.errors import UserError
from codex_jax.safety import filter_output, load_policy
from codex_jax.safety.data import CorpusFilter, resolve

AWS = "AKIA" + "Q3ZT7W2M5N8P4R6X"
GH = "ghp_" + "a1B2" * 9
PRIVATE = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n"
SECRETS = {
    "aws-access-key": f'aws_id = "{AWS}"\n',
    "github-token": f"TOKEN_FROM_ENV_OR = {GH!r}\n",
    "secret-assignment": 'db_password = "correct-horse-battery-staple"\n',
    "email": "# maintainer: jane.doe+lists@corp.io\n",
}


@pytest.fixture(scope="module")
def policy():
    return load_policy("default")


@pytest.mark.parametrize("rule", sorted(SECRETS))
def test_default_rules_find_and_redact(policy, rule):
    text = "x = 1\n" + SECRETS[rule] + "y = 2\n"
    found = [f for f in policy.scan(text) if f.rule == rule]
    assert [(f.line, f.action) for f in found] == [(2, "redact")]
    result = policy.apply(text)
    assert f"[REDACTED:{rule}]" in result.text and not result.blocked
    assert result.text.startswith("x = 1\n") and result.text.endswith("y = 2\n")
    secret = text[found[0].start : found[0].end]
    assert secret not in result.text


def test_secret_assignment_keeps_the_name(policy):
    out = policy.apply('api_key: "sk_live_0123456789abcdef0123"').text
    assert out == 'api_key: "[REDACTED:secret-assignment]"'


def test_private_key_blocks(policy):
    result = policy.apply("def f():\n    return '''\n" + PRIVATE + "'''\n")
    assert result.blocked and result.findings[0].rule == "private-key"
    assert result.findings[0].line == 3
    assert policy.apply("-----BEGIN OPENSSH PRIVATE KEY-----").blocked
    assert policy.apply("-----BEGIN PGP PRIVATE KEY BLOCK-----").blocked
    assert not policy.apply("-----BEGIN CERTIFICATE-----").blocked


@pytest.mark.parametrize(
    "text",
    [
        'key = "AKIAIOSFODNN7EXAMPLE"',  # AWS's documentation key
        "write to someone@example.com",
        'password = "changeme-changeme-changeme"',
        'token = "short"',
        "tokens = [token for token in tokenize(source)]",
        "x = 'AKIA' + suffix  # AKIA alone",
        "@decorator\ndef f(): pass",
    ],
)
def test_allowed_or_harmless_text_is_left_alone(policy, text):
    assert policy.scan(text) == [] and policy.apply(text).text == text


@pytest.mark.parametrize(
    "name, text",
    [
        ("a", "a" * 1_000_000),
        ("a@", "a" * 1_000_000 + "@x.io"),
        ("begin", "-----BEGIN " * 100_000),
        ("begin-rsa", "-----BEGIN RSA " * 70_000),
        ("equals", "=" * 1_000_000),
        ("password=", "password" + "=" * 1_000_000),
        ("password='", "password = '" + "a" * 1_000_000),
        ("ghp", "ghp_" + "a" * 1_000_000),
        ("akia", "AKIA" * 250_000),
        ("at", "@" * 1_000_000),
        ("domain", "a@" + "b." * 500_000),
        ("token", "token" * 200_000),
        ("mixed", ("x@y." + "a" * 60) * 15_000),
    ],
)
def test_adversarial_inputs_finish_fast(policy, name, text):
    # A backtracking blow-up on 1 MB takes minutes to hours; linear scanning takes well under a second. The
    # bound leaves room for a loaded 2-core CI machine running tests in parallel.
    start = time.perf_counter()
    policy.apply(text)
    assert time.perf_counter() - start < 10.0, name


def test_yaml_policy_extends_default(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(
        "extends: default\n"
        "rules:\n"
        "  - id: internal-host\n    action: redact\n    literal: build.corp.internal\n"
        "  - id: ticket\n    action: block\n    regex: 'secret-project-[0-9]{1,6}'\n"
        "    flags: [IGNORECASE]\n"
        "  - id: ok-mail\n    action: allow\n    regex: '@corp[.]io'\n"
    )
    p = load_policy(str(path))
    assert [r.id for r in p.rules][-3:] == ["internal-host", "ticket", "ok-mail"]
    assert p.apply("see buildXcorp.internal").findings == []  # a literal, not a regex
    assert p.apply("host = build.corp.internal").text == "host = [REDACTED:internal-host]"
    assert p.apply("About SECRET-PROJECT-42").blocked
    assert p.apply("mail jane@corp.io").findings == []  # allowed by the custom rule
    assert p.checksum != load_policy("default").checksum


@pytest.mark.parametrize(
    "body, message",
    [
        ("rules:\n  - id: a\n    action: delete\n    literal: x\n", "'action' must be one of"),
        ("rules:\n  - id: a\n    action: block\n", "exactly one of 'literal' or 'regex'"),
        ("rules:\n  - id: a\n    action: block\n    regex: '(a+)+b'\n", "unbounded repeats"),
        ("rules:\n  - id: a\n    action: block\n    regex: 'x.*y'\n", "unbounded repeats"),
        ("rules:\n  - id: a\n    action: block\n    regex: '(x'\n", "invalid regex"),
        (
            "rules:\n  - {id: a, action: block, literal: x}\n  - {id: a, action: allow, literal: y}\n",
            "duplicate rule ids",
        ),
        ("rules:\n  - {id: a, action: block, literal: x, flags: [Z]}\n", "unknown flag"),
        ("rules:\n  - {id: a, action: block, literal: x, colour: red}\n", "unknown keys"),
        ("extends: other\nrules: []\n", "'extends' may only be 'default'"),
        ("rules: [\n", "invalid YAML"),
    ],
)
def test_bad_policies_are_user_errors(tmp_path, body, message):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(UserError, match=message):
        load_policy(str(path))


def test_policy_specs():
    assert load_policy("") is None
    with pytest.raises(UserError, match="cannot read"):
        load_policy("/nonexistent/policy.yaml")
    assert resolve("auto", "stdlib") == "default" and resolve("auto", "/src/**/*.py") == ""
    assert resolve("", "stdlib") == "" and resolve("p.yaml", "x") == "p.yaml"


def test_filter_output():
    assert filter_output("x = 1", "default") == "x = 1"
    assert filter_output(SECRETS["email"], "default") == "# maintainer: [REDACTED:email]\n"
    assert filter_output(PRIVATE, "default") == "[withheld by the safety policy: private-key]"
    assert filter_output(PRIVATE, "") == PRIVATE


def test_data_filter_redacts_drops_and_counts(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "clean.py").write_text("def f():\n    return 1\n")
    (src / "mail.py").write_text("x = 1\n" + SECRETS["email"] + SECRETS["aws-access-key"])
    (src / "key.py").write_text("KEY = '''\n" + PRIVATE + "'''\n")
    (src / "rows.jsonl").write_text(json.dumps({"t": "ok"}) + "\n" + json.dumps({"t": PRIVATE}) + "\n")
    for pattern, docs in ((f"{src}/*.py", 2), (f"jsonl:{src}/rows.jsonl:t", 1)):
        corpus = read_source(pattern)
        filtered = CorpusFilter("default", pattern)(corpus)
        assert len(filtered.documents) == docs
    safety = CorpusFilter("default", "x")
    corpus = safety(read_source(f"{src}/*.py"))
    texts = {d.file: d.text for d in corpus.documents}
    assert "[REDACTED:email]" in texts["mail.py"] and "[REDACTED:aws-access-key]" in texts["mail.py"]
    key = next(r for r in corpus.files if r.path == "key.py")
    assert (key.records, key.skipped, key.bad) == (0, 1, ["key.py:2: safety: private-key"])
    manifest = corpus_manifest(corpus, corpus.documents[:1], {"source": "x"})
    before = manifest["checksum"]
    safety.add_to_manifest(manifest)
    assert manifest["safety"]["records_redacted"] == 1 and manifest["safety"]["records_dropped"] == 1
    assert manifest["safety"]["findings"] == {"aws-access-key": 1, "email": 1, "private-key": 1}
    assert manifest["checksum"] != before
    off = CorpusFilter("auto", f"{src}/*.py")
    kept = {d.file: d.text for d in off(read_source(f"{src}/*.py")).documents}
    assert kept["mail.py"].count("@corp.io") == 1 and "key.py" in kept
    assert off.summary() is None
