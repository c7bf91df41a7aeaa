"""Retrieval over embedding tables: nearest-neighbour indexes, search, kNN votes, change from baseline.

Import cost stays light: NumPy and the standard library at import; pyarrow, faiss and plotting
only inside the functions that need them.
"""

from ecgtool.retrieval.index import Index, build_index, embedding_matrix, load_index
from ecgtool.retrieval.knn import knn_class_scores, knn_scores

__all__ = ["knn_scores", "knn_class_scores", "embedding_matrix", "Index", "build_index", "load_index"]
