"""`make bench`: piBLOOM against its peers (llama-server, unbatched piBLOOM), each a server process
measured over HTTP. Imports no server code, except the model cache's GGUF fetch for llama-server.
"""
