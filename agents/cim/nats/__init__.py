"""The one NATS transport layer, laid out like nats.py's own `js/`: connect (settings and
connection), headers (the faster header parser), publish (pipelined appends), read
(resumable reads by direct gets), pull (a durable's batches), api (the JetStream JSON API
and its error codes), rpc (calling an agent's endpoint), discovery (`$SRV.INFO`) and retry
(riding out a leader election). Nothing above this package talks to NATS another way."""
