"""The training run folder: which config changes a resume may make."""

from maskcontrast.train_folder import refused_config_changes


def test_refused_config_changes_name_the_key_and_allowed_ones_pass():
    old = {
        "model": {"embed_dim": 32},
        "trainer": {"max_steps": 4, "threads": 1},
        "data": {"sources": [{"name": "pet", "root": "/a"}], "num_workers": 2, "image_size": 64},
    }
    moved = {
        "model": {"embed_dim": 32},
        "trainer": {"max_steps": 9, "threads": 2},
        "data": {"sources": [{"name": "pet", "root": "/scratch/a"}], "num_workers": 0, "image_size": 64},
    }
    assert refused_config_changes(old, moved) == []
    changed = {
        **moved,
        "model": {"embed_dim": 64},
        "data": {**moved["data"], "sources": [{"name": "voc", "root": "/a"}]},
    }
    assert refused_config_changes(old, changed) == ["data.sources.0.name: 'pet' -> 'voc'", "model.embed_dim: 32 -> 64"]
    two = {**moved, "data": {**moved["data"], "sources": [{"name": "pet", "root": "/a"}] * 2}}
    assert refused_config_changes(old, two) == ["data.sources.1.name: '<absent>' -> 'pet'"]  # one more source


def test_a_run_saved_before_the_key_momentum_rename_resumes():
    old = {"objective": {"momentum": 0.99, "temperature": 0.5}, "trainer": {"max_steps": 4}}
    new = {"objective": {"key_momentum": 0.99, "momentum": None, "temperature": 0.5}, "trainer": {"max_steps": 8}}
    assert refused_config_changes(old, new) == []
    changed = {"objective": {"key_momentum": 0.9, "momentum": None, "temperature": 0.5}, "trainer": {"max_steps": 8}}
    assert refused_config_changes(old, changed) == ["objective.key_momentum: 0.99 -> 0.9"]
