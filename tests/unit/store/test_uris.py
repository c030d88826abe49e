"""saeception.store.uris: one judgement of what a URI is, and one redaction, for every caller."""

import ast
from pathlib import Path

import pytest
from paths import REPO

from saeception.store.uris import check_uri, is_uri, local_path, redact, scheme

ROOT = REPO


def test_file_uris_are_local_paths():
    assert not is_uri("/mnt/nfs/x") and not is_uri("file:///mnt/nfs/x") and not is_uri("relative/dir")
    assert is_uri("s3://bucket/x") and is_uri("gs://b") and is_uri("memory://x") and is_uri("http://127.0.0.1:5000")
    assert local_path("file:///mnt/nfs/x") == Path("/mnt/nfs/x") == local_path("/mnt/nfs/x")
    assert scheme("sqlite:////abs/db") == "sqlite" and scheme("/abs") == ""
    with pytest.raises(ValueError):
        local_path("s3://bucket/x")
    assert check_uri("s3://bucket") is None and check_uri("memory://x") is None
    assert "unknown filesystem scheme 'nope'" in check_uri("nope://x")


@pytest.mark.parametrize("uri,secret", [
    ("https://hf_TOKENabc123@huggingface.co/org/repo", "hf_TOKENabc123"),
    ("http://127.0.0.1:5000/?access_token=eyJhbGciOi", "eyJhbGciOi"),
    ("https://login.example.com/oauth?client_id=me&client_secret=sssh", "sssh"),
    ("gs://bucket/x?credentials=%7B%22private_key%22", "%7B%22private_key%22"),
    ("https://acct.blob.core.windows.net/c/x?sv=2020&sig=AbCdEf%3D", "AbCdEf%3D"),
    ("s3://AKIAEXAMPLE:wJalrXUtnFEMI/K7MDENG@bucket/sweeps", "wJalrXUtnFEMI"),
])
def test_redact_masks_tokens_in_userinfo_and_query(uri, secret):
    assert secret not in redact(uri) and secret not in redact(f"error: {uri} refused")
    assert redact(redact(uri)) == redact(uri)


def test_no_module_judges_a_uri_by_itself():
    """Every '://' test lives in saeception/store/uris.py: cache, identity, the CLI and the trainables ask it."""
    offenders = []
    for path in [*(ROOT / "saeception").rglob("*.py"), *(ROOT / "trainables").rglob("*.py")]:
        if path.name == "uris.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value == "://":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders
