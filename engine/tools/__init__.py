"""Tools for developers and demos, apart from the runtime: benchmarks, the sample generator, the
embedded redis-server and Redis Cluster.  A consumer process imports none of them."""
