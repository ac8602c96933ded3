"""Text in and out: tokenizers (SentencePiece, byte-level BPE), chat templates, sampling."""
from .factory import load_tokenizer
from .tokenizer import StreamDecoder, Tokenizer, TokenType

__all__ = ["load_tokenizer", "Tokenizer", "TokenType", "StreamDecoder"]
