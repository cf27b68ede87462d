"""snapshop_ml: the model pipeline of the snapshop product-image search service."""
