"""Tools around the service, not part of it: the benchmark (``embedq bench``), the retrieval
evaluation (``embedq eval``), the KorQuAD reader and throwaway local Redis servers and workers.
Each imports the model stack (torch, sentence-transformers) only when it needs it."""
