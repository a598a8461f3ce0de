"""The test suite. A package, so pytest names modules ``tests.<area>.<module>`` and no area folder (``tests/azure``) can
hide an installed package of the same top-level name (the Azure SDK's ``azure``).
"""
