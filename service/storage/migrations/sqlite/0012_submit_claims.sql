-- Each submit claim carries a fencing token beside its node (held_by, which now names the holder
-- of any submit claim, a held Segmind request or a callback provider's submit attempt): an
-- attempt's outcome is written only under the token of the claim that is still current
-- (docs/scaling.md).
ALTER TABLE jobs ADD COLUMN submit_token INTEGER;
