module github.com/farmdns/farmdns

go 1.26.8
