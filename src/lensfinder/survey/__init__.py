"""Survey scale: HDF5/Zarr cutout cubes or FITS tiles + a catalogue in; cutout blocks, Parquet parts (resumable, on 1..N
Lightning processes) and the merged catalogue ranked by float64 score (Parquet, CSV or FITS) with its rejected table out."""
