"""Real servers on loopback, run as child processes: nats-server and a seaweedfs S3 endpoint.

The test suites start them through these classes, and so does `cim up`; nothing here is a mock.
"""
