"""The ways Envoy asks: one module per transport, all serving one decision core."""
