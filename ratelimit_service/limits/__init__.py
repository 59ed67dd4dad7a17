"""What the limits are and what a request costs: rules, bucket keys, bucket arithmetic.

Where buckets are computed. config loads and validates rule files (reading them is its
only I/O) into the rules tree; planner turns a request into the bucket checks it needs,
with bucket_keys naming each bucket; bucket is the GCRA arithmetic that the memory store
and gcra.lua both run. Everything but config is pure: plain values in, plain values out.
"""
