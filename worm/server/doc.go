// Package server is the wormserver.
package server
