"""A stage found only through the ``ram_grounded.stages`` entry point is usable from YAML."""

from __future__ import annotations

import textwrap

import numpy as np

from ram_grounded import available_stages, load_pipeline

PLUGIN = textwrap.dedent('''
    from dataclasses import dataclass
    from typing import ClassVar
    from ram_grounded import Stage, Tag

    @dataclass(eq=False)
    class Shout(Stage):
        """Plugin stage: tags every image with a fixed word."""
        name: ClassVar[str] = "shout_plugin"
        reads: ClassVar[frozenset] = frozenset({"image"})
        writes: ClassVar[frozenset] = frozenset({"tags"})
        word: str = "hey"

        def process(self, records):
            for r in records:
                r.tags = [Tag(self.word, 1.0)]
            return records
''')


def test_entry_point_plugin_stage_runs_from_yaml(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "shout_pkg").mkdir(parents=True)
    (site / "shout_pkg" / "__init__.py").write_text(PLUGIN)
    dist = site / "shout_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: shout-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[ram_grounded.stages]\nshout_plugin = shout_pkg:Shout\n")
    monkeypatch.syspath_prepend(str(site))

    assert "shout_plugin" in available_stages()
    yaml_file = tmp_path / "p.yaml"
    yaml_file.write_text("name: plug\nstages:\n  - stage: shout_plugin\n    params: {word: hello}\n")
    pipe = load_pipeline(yaml_file)
    record = pipe(np.zeros((4, 4, 3), np.uint8))
    assert [t.name for t in record.tags] == ["hello"]
