// The pause container of the real node's pods, built locally so no registry is needed.
module kocoon.io/images/pause

go 1.26.0
