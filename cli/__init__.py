"""featcache's command line (installed as the package ``featcache_cli``): thin click commands over the library."""
