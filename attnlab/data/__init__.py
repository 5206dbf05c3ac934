"""Data pipeline: corpus sources -> SentencePiece tokenizer -> packed token shards -> windows.

Typical use (what the training loop does)::

    prepared = prepare_data(DataConfig())            # cached under data/cache/
    check_vocab_fits(prepared.vocab_size, model_cfg.vocab_size)
    train_set = TokenWindowDataset(prepared.train, seq_len=256)
"""

from attnlab.data.config import DataConfig, DataError, DataFileNotFoundError, TokenizerConfig
from attnlab.data.dataset import TokenWindowDataset
from attnlab.data.prepare import PreparedData, is_val_document, prepare_data
from attnlab.data.shards import ShardIndex
from attnlab.data.tokenizer import Tokenizer, check_vocab_fits

__all__ = [
    "DataConfig", "DataError", "DataFileNotFoundError", "PreparedData", "ShardIndex", "TokenWindowDataset",
    "Tokenizer", "TokenizerConfig", "check_vocab_fits", "is_val_document", "prepare_data",
]
