-- 0003: tokens made under a key version's alternate key.
--
-- FF1 under two key versions is two permutations of one domain: the new version's token
-- of one value may be a token an older version issued for another. Such a token would be
-- ambiguous on write-back, so the engine issues the value's token under the version's
-- alternate key instead (method 'ff1-alt'), resolved with that key.

ALTER TABLE token_registry DROP CONSTRAINT token_registry_method_check;
ALTER TABLE token_registry
    ADD CONSTRAINT token_registry_method_check
    CHECK (method IN ('ff1', 'vault', 'mixed', 'ff1-alt'));
