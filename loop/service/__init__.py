"""The daemon: the dramatiq broker and its actors, the controller (`cai run`) and the shard workers."""
