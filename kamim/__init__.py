"""kamim: Keypoint Aware Masked Image Modeling with an offline keypoint cache.

Subpackages follow the data flow: ``kamim.preprocess`` -> ``kamim.cache`` -> ``kamim.train`` ->
``kamim.evaluate``. The root package holds only what all of them share: the CLI, errors, paths,
run configs and the dataset adapters.
"""

__version__ = "0.1.0"
