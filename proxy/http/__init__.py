"""The wire: the accept loop (listener), our HTTP/1.1 server (server), the pooled upstream
client (client), and the write back-pressure both share (flow). Both sides parse with
llhttp through httptools."""
