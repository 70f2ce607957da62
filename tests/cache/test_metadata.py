"""The cache's metadata as typed, frozen objects (cache.metadata): read once, written back unchanged."""

from __future__ import annotations

import dataclasses

import pytest

from featcache.cache.metadata import CacheMetadata
from featcache.cache.reader import open_cache, read_metadata
from featcache.common.errors import FeatcacheError


def test_metadata_round_trips_and_answers_the_questions_asked_of_it(labelled_caches):
    for path in labelled_caches.values():
        cache = open_cache(path)
        meta = cache.metadata
        assert CacheMetadata.from_dict(cache.meta).to_dict() == cache.meta  # nothing lost, nothing added
        assert read_metadata(path) == meta
        assert meta.fingerprint == cache.meta["fingerprint"] and meta.format == cache.format
        assert meta.encoder_sha256 == cache.meta["parts"]["encoder"]["weights_sha256"]
        assert meta.encoder_tag == cache.meta["encoder"]["tag"]
        for split in cache.splits:
            assert cache.split_info(split).n_rows == cache.meta["splits"][split]["n_rows"]
            assert list(cache.split_info(split).labels) == cache.meta["splits"][split]["labels"]
        with pytest.raises(dataclasses.FrozenInstanceError):
            meta.fingerprint = "x"  # type: ignore[misc]


def test_damaged_metadata_is_a_one_line_error(labelled_caches):
    meta = dict(open_cache(next(iter(labelled_caches.values()))).meta)
    del meta["splits"]
    with pytest.raises(FeatcacheError, match="damaged cache metadata"):
        CacheMetadata.from_dict(meta, "some.zarr")
