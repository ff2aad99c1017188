module github.com/modzmq/modzmq

go 1.26

require github.com/pebbe/zmq4 v1.4.0
