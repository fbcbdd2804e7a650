"""What pipeline/ and gan/ both need, below both (like NVIDIA's dnnlib): atomic writes and
file hashes (``util.files``), config defaults from the schema and shared config facts
(``util.config``). It imports neither package; gan never imports pipeline."""
