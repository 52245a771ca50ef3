"""The ``data.*`` keys of the config schema (:data:`codex_jax.config.schema.SCHEMA` holds them in order):
sources, splits, tokenizer, input pipeline, example formats and packing."""

from __future__ import annotations

from typing import Any

# key -> (default, meaning), as in schema.SCHEMA
DATA_SCHEMA: dict[str, tuple[Any, str]] = {
    "data.source": (
        "stdlib",
        "'stdlib' (Python standard library source), a glob ('/src/**/*.py'), 'jsonl:PATH:FIELD' or "
        "'csv:PATH:COLUMN'; FIELD/COLUMN may be a template of fields "
        "('jsonl:d/*.jsonl:{title}: {body}'; newline and tab escapes work).",
    ),
    "data.include": (
        "",
        "Comma-separated globs relative to the source's root; only matching files "
        "are read ('': all). A glob without '/' matches file names at any depth.",
    ),
    "data.exclude": (
        "",
        "Comma-separated globs relative to the source's root; matching files are "
        "skipped (e.g. 'test_*.py,tests/**').",
    ),
    "data.eval_source": (
        "",
        "A source (as data.source) holding the held-out split; '' holds out "
        "data.eval_fraction of data.source by a hash of each path.",
    ),
    "data.mixture": (
        "",
        "A weighted mixture of named sources instead of data.source: a JSON object "
        '\'{"NAME": {"source": ..., "weight": 0.8, ...}, ...}\' (weights are relative; each source may '
        "also set format, include, exclude, eval_fraction, eval_source and max_files, else the data.* "
        "value). Train batches mix them at those proportions; eval reports eval/NAME/loss per source. "
        "'': no mixture.",
    ),
    "data.on_bad_record": (
        "skip",
        "Bad records (invalid JSON, missing field, undecodable bytes, "
        "empty text): 'skip' (counted in data_manifest.json, warned on stderr) "
        "or 'error' (stop at the first, naming file:line).",
    ),
    "data.seq_len": (256, "Tokens per training sequence."),
    "data.batch_size": (16, "Global sequences per micro-step (all devices, all processes)."),
    "data.eval_fraction": (
        0.05,
        "Fraction of files held out for evaluation (hash of the path) when data.eval_source is ''.",
    ),
    "data.max_files": (0, "Use at most this many files of the source (0: all); for quick runs."),
    "data.tokenizer": (
        "",
        "A SentencePiece model (file, or folder with spm.model) or a Hugging Face tokenizer folder "
        "(tokenizer.json / tokenizer.model); '' uses model.init_from's, else trains one into "
        "workdir/tokenizer.",
    ),
    "data.tokenizer_train_bytes": (
        20_000_000,
        "At most this many bytes of training text are used to train the tokenizer.",
    ),
    "data.num_workers": (0, "grain worker processes (0: read in the main process)."),
    "data.cache_workers": (
        1,
        "Processes that tokenize the corpus into the token cache (1: this process, with the tokenizer's "
        "threads); more are spawned and tokenize with one thread each. The cache bytes are the same.",
    ),
    "data.prefetch": (
        0,
        "Batches prepared ahead: by a background thread (num_workers=0) or by "
        "each worker process (0: none; batches are the same either way).",
    ),
    "data.safety_policy": (
        "auto",
        "Secret filter on training records (codex_jax.safety): 'default' (built-in rules), a "
        "YAML policy file, '' (off) or 'auto' ('default' for the stdlib source, else off). "
        "Counted in data_manifest.json.",
    ),
    "data.format": (
        "text",
        "'text' (documents, as data.source reads them), 'prompt_completion' (records with "
        "data.prompt_field and data.completion_field, from 'jsonl:PATH' or 'csv:PATH') or 'chat' "
        "(records with a data.messages_field list of {role, content}, roles system/user/assistant, "
        "from 'jsonl:PATH'; rendered with the chat template).",
    ),
    "data.prompt_field": ("prompt", "The prompt field (column) of data.format='prompt_completion' records."),
    "data.completion_field": (
        "completion",
        "The completion field (column) of data.format='prompt_completion' records.",
    ),
    "data.messages_field": ("messages", "The messages field of data.format='chat' records."),
    "data.chat_template": (
        "",
        "A Jinja chat template file for data.format='chat' and generate.chat ('': the tokenizer's own "
        "chat_template, or the built-in template for a tokenizer without one).",
    ),
    "data.train_on": (
        "completion",
        "Which tokens the loss counts in example formats: 'completion' (the completion or assistant "
        "turns, and the EOS / end-of-turn after them) or 'all'.",
    ),
    "data.packing": (
        "concat",
        "Rows of data.seq_len+1 tokens: 'concat' (consecutive windows of the token stream), "
        "'segments' (whole examples or documents packed per row; attention stays inside each and "
        "positions restart) or 'pad' (one example per row, padded).",
    ),
    "data.overlong": (
        "truncate",
        "An example longer than a row under 'segments'/'pad' packing: 'truncate' or 'drop' (counted "
        "in data_manifest.json).",
    ),
}
