module github.com/farmdns/farmdns

go 1.26.8

require golang.org/x/sys v0.31.0 // indirect
