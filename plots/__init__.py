"""Figure recipes: plots of results Parquet files and the TFLA paper figures."""
