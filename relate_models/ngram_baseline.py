"""The baseline the CTCVR model must beat: logistic regression on hashed n-grams + context.

Word unigrams and bigrams of the ad text, hashed; one-hot keyword, vertical, position and
user_segment, hashed into their own space; plus keyword-in-text and text length. One
model for CTR (clicked) and one for CTCVR (clicked AND converted), fitted directly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction import FeatureHasher
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.linear_model import LogisticRegression

from relate_models.ctcvr import FeatureEncoder


@dataclass
class NgramBaseline:
    n_features: int = 2**18
    C: float = 1.0
    max_iter: int = 200

    def __post_init__(self):
        self.text_hasher = HashingVectorizer(
            ngram_range=(1, 2), n_features=self.n_features, alternate_sign=False, norm="l2", lowercase=True
        )
        self.context_hasher = FeatureHasher(n_features=2**12, input_type="string", alternate_sign=False)
        self.models: dict[str, LogisticRegression] = {}

    def features(self, frame: pd.DataFrame) -> sp.csr_matrix:
        """Frame columns: ad_text, keyword, vertical, user_segment, position[, query]."""
        texts = frame["ad_text"].fillna("").astype(str)
        codes, uniques = texts.factorize()
        # texts repeat across impressions: hash each distinct text once, then gather rows
        text_x = self.text_hasher.transform(list(uniques))[codes]
        keywords = frame["keyword"].fillna("").astype(str)
        context = [
            [f"kw={k}", f"vert={v}", f"seg={s}", f"pos={p}"]
            for k, v, s, p in zip(keywords, frame["vertical"], frame["user_segment"], frame["position"])
        ]
        context_x = self.context_hasher.transform(context)
        queries = frame["query"] if "query" in frame else pd.Series([None] * len(frame), index=frame.index)
        relevance = FeatureEncoder.relevance(texts.tolist(), keywords.tolist(), queries.tolist()).numpy()
        dense = np.column_stack([relevance, texts.str.len().to_numpy(dtype=np.float64) / 100.0])
        return sp.hstack([text_x, context_x, sp.csr_matrix(dense)], format="csr")

    def fit(self, frame: pd.DataFrame, targets: dict[str, np.ndarray], seed: int = 0) -> "NgramBaseline":
        x = self.features(frame)
        for name, y in targets.items():
            y = np.asarray(y)
            if y.min() == y.max():
                raise ValueError(f"baseline: target {name!r} has a single class; nothing to learn")
            model = LogisticRegression(C=self.C, max_iter=self.max_iter, solver="lbfgs", random_state=seed)
            self.models[name] = model.fit(x, y)
        return self

    def predict(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        x = self.features(frame)
        return {name: model.predict_proba(x)[:, 1] for name, model in self.models.items()}
