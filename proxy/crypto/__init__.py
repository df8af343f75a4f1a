"""Pure cryptography: FF1, alphabets, tokenizers and the immutable keyring. No I/O here."""
