"""ShopStream: sessionization, per-minute metrics and fraud flags on Redis Streams."""
