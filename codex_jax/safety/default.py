"""The built-in policy (``'default'``): private keys, cloud/GitHub tokens, secret assignments,
e-mail addresses; placeholders such as ``...EXAMPLE`` or ``changeme`` are allowed.

Every pattern runs in time linear in the text: repeats are bounded and possessive where a run could
be re-scanned, and a match may only start where the run it matches starts (look-behinds). Patterns
begin with a literal or a small character class, so the regex engine skips ahead quickly (the
look-behinds come after that first literal: ``....`` spans it).
"""

DEFAULT_POLICY = {
    "rules": [
        {
            "id": "private-key",
            "action": "block",
            "regex": r"-----BEGIN (?:[A-Z0-9]{1,20} ){0,3}PRIVATE KEY(?: BLOCK)?-----",
        },
        {
            "id": "aws-access-key",
            "action": "redact",
            "regex": r"A(?:KIA|SIA|GPA|IDA|ROA|NPA|NVA|IPA)(?<![A-Z0-9]....)[A-Z0-9]{16}"
            r"(?![A-Z0-9])",
        },
        {
            "id": "github-token",
            "action": "redact",
            "regex": r"g(?:h[pousr]_(?<![A-Za-z0-9_]....)[A-Za-z0-9]{36,255}+"
            r"|ithub_pat_(?<![A-Za-z0-9_]...........)[A-Za-z0-9_]{22,255}+)(?![A-Za-z0-9_])",
        },
        {
            "id": "secret-assignment",
            "action": "redact",
            "regex": r"[AaTtSsPp](?i:(?<=a)(?:pi[_-]?key|ccess[_-]?key|uth[_-]?token)|(?<=t)oken"
            r"|(?<=s)ecret|(?<=p)assw(?:or)?d)"
            r"[A-Za-z0-9_]{0,30}+['\"]?[ \t]{0,4}+(?:=|:|:=|=>)[ \t]{0,4}+[rRbBuU]?"
            r"(?P<q>['\"])(?P<secret>[^'\"\s\\]{16,256}+)(?P=q)",
        },
        {
            "id": "email",
            "action": "redact",
            "regex": r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}+@[A-Za-z0-9-]{1,63}"
            r"(?:\.[A-Za-z0-9-]{1,63}){1,8}(?![A-Za-z0-9-])",
        },
        {
            "id": "placeholder",
            "action": "allow",
            "regex": r"example|placeholder|dummy|changeme|x{8}|your[_-]",
            "flags": ["IGNORECASE"],
        },
    ]
}
