//! Tokenizers: gpt2 byte-level BPE and llama SentencePiece-style BPE (being written).
