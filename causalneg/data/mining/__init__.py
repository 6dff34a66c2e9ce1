"""Hard-negative mining: retrievers (``bm25``, ``dense``) return ranked candidates with the positives' scores,
``filters`` drops positives and likely false negatives (counting each rule), ``artifact`` writes the result.

    ranked = mine_bm25(dataset, split, query_ids, top_k)        # or mine_dense(..., encoder, ...)
    kept, counts = filter_all(ranked, FilterConfig(...))
    directory = ensure_mined(spec, dataset, selection)           # both, as a reusable artifact
"""
