"""kamim.preprocess: keypoint detectors, canonical resize, the ring raster and the multiprocess cache builder."""
