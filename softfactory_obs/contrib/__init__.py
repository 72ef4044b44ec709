"""Framework adapters: each tells the middleware the matched route template, in one environ key.

Import only the one you use; none is imported by ``softfactory_obs`` itself.
"""
