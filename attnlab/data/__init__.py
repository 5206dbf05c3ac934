"""Data pipeline: corpus sources -> SentencePiece tokenizer -> packed token shards -> windows;
or a synthetic task (``mqar``, ``induction``) generated from the seed (``attnlab.data.synthetic``).

Typical use (what the training loop does)::

    prepared = prepare_data(DataConfig())            # cached under data/cache/
    check_vocab_fits(prepared.vocab_size, model_cfg.vocab_size)
    train_set = TokenWindowDataset(prepared.train, seq_len=256)
"""

from attnlab.data.config import DataConfig, DataError, DataFileNotFoundError, TokenizerConfig
from attnlab.data.dataset import TokenWindowDataset
from attnlab.data.prepare import PreparedData, is_val_document, prepare_data
from attnlab.data.shards import ShardIndex
from attnlab.data.synthetic import IGNORE_INDEX, SyntheticDataset, SyntheticTask
from attnlab.data.tokenizer import Tokenizer, check_vocab_fits

__all__ = [
    "IGNORE_INDEX", "DataConfig", "DataError", "DataFileNotFoundError", "PreparedData", "ShardIndex",
    "SyntheticDataset", "SyntheticTask", "TokenWindowDataset", "Tokenizer", "TokenizerConfig", "check_vocab_fits",
    "is_val_document", "prepare_data",
]
